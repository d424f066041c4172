"""The switches GPUs use, executed on the CPU in every CI run: bf16 autocast and ``torch.compile``
(inductor, with the system C++ compiler) through a few training and sampling steps."""
import logging
import math

import numpy as np
import torch

from scoresde.cli import main
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.train import loop as trainer
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config


def tiny(**switches):
    config = gmm_config()
    config.data.num_train = 256
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 32, 3, 1, 1000
    t.checkpoint_freq, t.snapshot_freq, t.snapshot_sampling = 3, 1000, False
    t.progress_bar, t.tensorboard = False, False
    for name, value in switches.items():
        t[name] = value
    config.model.hidden, config.model.n_blocks, config.model.num_scales = 16, 1, 50
    s = config.sampling
    s.method, s.steps, s.num_samples, s.batch_size = "fast", 3, 16, 16
    return config


def test_bf16_autocast_trains_and_samples_on_cpu(tmp_path):
    run = trainer.setup_run(options_from_config(tiny(bf16=True)), tmp_path, DistContext())
    assert run.accel.bf16
    seen = []
    run.model.linear_out.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    losses = [float(trainer.train_step(run, *trainer.next_batch(run))) for _ in range(3)]
    assert seen == [torch.bfloat16] * 3 and all(math.isfinite(v) for v in losses)
    trainer.save_checkpoint(run)
    run.metrics.close()
    main.run(tiny(bf16=True), tmp_path, "sample")
    samples = np.load(tmp_path / "samples" / "samples.npz")["samples"]
    assert samples.dtype == np.float32 and np.isfinite(samples).all()   # the sampler ran in float32


def test_torch_compile_trains_and_samples_on_cpu(tmp_path, caplog):
    run = trainer.setup_run(options_from_config(tiny(compile=True)), tmp_path, DistContext())
    assert run.accel.compile and isinstance(run.update, trainer.CompiledGradientStep)  # the compiled step
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.INFO, logger=trainer.__name__):
        losses = [float(trainer.train_step(run, *trainer.next_batch(run))) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1     # one graph: no break
    assert len([r for r in caplog.records if "compiled the training step" in r.getMessage()]) == 1
    trainer.save_checkpoint(run)
    run.metrics.close()
    info = main.run(tiny(compile=True), tmp_path, "sample")
    assert info["nonfinite_samples"] == 0 and info["num_samples"] == 16
