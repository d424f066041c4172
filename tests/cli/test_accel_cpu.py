"""The switches GPUs use, executed on the CPU in every CI run: bf16 autocast and ``torch.compile``
(inductor, with the system C++ compiler) through a few training and sampling steps."""
import logging
import math

import numpy as np
import torch

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.train import loop as trainer
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config


# 3 training steps and 3 sampling steps (no eval: its sizes stay the config's)
ACCEL = {"data.num_train": 256, "training.batch_size": 32, "training.n_iters": 3, "training.log_freq": 1,
         "training.checkpoint_freq": 3, "training.keep_last": 3, "optim.warmup": 500, "sampling.steps": 3,
         "eval.num_samples": 2000, "eval.batch_size": 1000, "eval.true_nll_samples": 100_000}


def tiny(**switches):
    """``ACCEL`` with the training switches ``switches`` (``bf16=True``, ``compile=True``)."""
    return tiny_config(**ACCEL, **{f"training.{name}": value for name, value in switches.items()})


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
