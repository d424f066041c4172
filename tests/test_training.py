"""The training driver: config validation, warm-up and clipping numbers, exact resume after a signal,
checkpoint retention, metrics and the CPU handling of GPU switches."""
import json
import logging
import os
import signal

import pytest
import torch

from configs.digits.ddpmpp_vp import get_config as digits_config
from configs.toy.gmm_vp import get_config as gmm_config
from training import checkpoint as ckpt
from training import trainer
from training.distributed import DistContext
from training.factory import validate_config
from training.optim import clip_gradients, optimize_step, warmup_lr
from training.runtime import GracefulStop, resolve_accel




def tiny_toy_config():
    config = gmm_config()
    config.data.num_train = 512
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 64, 8, 2, 4
    t.checkpoint_freq, t.snapshot_freq, t.snapshot_sampling = 4, 1000, False
    t.progress_bar, t.tensorboard = False, False
    config.model.hidden, config.model.n_blocks, config.model.num_scales = 16, 1, 50
    config.optim.warmup = 2
    config.eval.num_samples, config.eval.batch_size = 64, 64
    config.eval.rtol, config.eval.atol, config.eval.true_nll_samples = 1e-3, 1e-3, 1000
    config.sampling.num_samples, config.sampling.batch_size = 32, 32
    return config


def tiny_digits_config():
    """A 1-level U-Net with dropout, flips and dequantisation: every random stream in use."""
    config = digits_config()
    config.data.num_train, config.data.random_flip = 256, True
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 16, 6, 2, 3
    t.checkpoint_freq, t.snapshot_freq, t.snapshot_sampling = 3, 1000, False
    t.progress_bar, t.tensorboard = False, False
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.dropout, m.num_scales = 8, (1,), 1, (), 0.1, 50
    config.eval.num_samples, config.eval.batch_size = 16, 16
    config.eval.rtol, config.eval.atol = 1e-2, 1e-2
    config.sampling.num_samples, config.sampling.batch_size = 4, 4
    return config


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("path, value, message", [
    ("training.sde", "vpsdee", r"config\.training\.sde must be one of \[.*'vpsde'"),
    ("sampling.predictor", "magic", r"config\.sampling\.predictor must be one of \[.*'euler_maruyama'"),
    ("sampling.method", "gibbs", r"config\.sampling\.method must be one of \['fast', 'ode', 'pc'\]"),
    ("eval.trace", "hutch", r"config\.eval\.trace must be one of"),
    ("data.dataset", "imagenet", r"config\.data\.dataset must be one of \[.*'checkerboard'"),
    ("model.name", "resnet", r"config\.model\.name must be one of \['ddpmpp', 'mlp', 'ncsnpp'\]"),
    ("training.batch_size", 0, r"config\.training\.batch_size must be an integer >= 1, got 0"),
    ("model.ema_rate", 1.5, r"config\.model\.ema_rate must be a number in \[0.0, 1.0\], got 1.5"),
    ("optim.lr", -1.0, r"config\.optim\.lr must be a number in \(0.0, inf\)"),
    ("training.eps", 1.0, r"config\.training\.eps must be a number in \(0.0, 1.0\)"),
    ("training.continuous", False, r"config\.training\.continuous must be True for training\.loss='dsm'"),
    ("training.likelihood_weighting", False, r"importance_sampling=True requires training\.likelihood_weighting"),
])
def test_validation_names_the_field(path, value, message):
    config = tiny_toy_config()
    section, name = path.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_validation_of_consistency_across_fields():
    config = tiny_toy_config()
    validate_config(config)
    config.training.loss, config.training.continuous = "ddpm", False     # discrete labels start at 0
    config.training.likelihood_weighting = config.training.importance_sampling = False
    with pytest.raises(ValueError, match=r"config\.model\.embedding_type='fourier'.*use 'positional'"):
        validate_config(config)
    config.model.embedding_type = "positional"
    validate_config(config)
    config.model.beta_max = 0.01
    with pytest.raises(ValueError, match=r"config\.model \(vpsde\): beta_max must be > beta_min"):
        validate_config(config)


def test_every_shipped_config_validates():
    from configs.cifar10 import ddpmpp_subvp, ddpmpp_vp, ncsnpp_ve
    from configs.digits import ncsnpp_ve as digits_ve
    from configs.toy import checkerboard_vp, gmm_subvp, gmm_ve
    for module in (ddpmpp_vp, ddpmpp_subvp, ncsnpp_ve, digits_ve, checkerboard_vp, gmm_subvp, gmm_ve):
        validate_config(module.get_config())
    validate_config(digits_config())
    validate_config(gmm_config())


# ---------------------------------------------------------------------------------------- optimizer
def test_linear_warmup_numbers():
    assert [warmup_lr(k, 1e-3, 10) for k in (1, 5, 10, 11, 1000)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert warmup_lr(1, 2e-4, 0) == 2e-4
    with pytest.raises(ValueError, match="update"):
        warmup_lr(0, 1e-3, 10)


def test_gradient_clipping_numbers():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert float(clip_gradients([p], grad_clip=1.0)) == pytest.approx(5.0)
    assert torch.allclose(p.grad, torch.tensor([0.6, 0.8]))
    p.grad = torch.tensor([3.0, 4.0])
    assert float(clip_gradients([p], grad_clip=10.0)) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert float(clip_gradients([p], grad_clip=0.0)) == pytest.approx(5.0)          # 0 disables
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))


def test_optimize_step_applies_warmup_and_clipping():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=123.0)
    p.grad = torch.tensor([30.0, 40.0])
    lr, norm = optimize_step(opt, [p], update=2, lr=1.0, warmup=4, grad_clip=1.0)
    assert lr == 0.5 and opt.param_groups[0]["lr"] == 0.5 and float(norm) == pytest.approx(50.0)
    assert torch.allclose(p.data, torch.tensor([-0.3, -0.4]))          # lr 0.5 x clipped grad (0.6, 0.8)


# ---------------------------------------------------------------------------------------- resume
def _weights(workdir):
    state, _ = ckpt.load_latest(workdir / "checkpoints")
    return state


def _assert_same_training_state(a: dict, b: dict):
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    assert a["loader"] == b["loader"]
    assert torch.equal(a["rng"]["ranks"][0]["generator"], b["rng"]["ranks"][0]["generator"])
    assert torch.equal(a["rng"]["ranks"][0]["torch_cpu"], b["rng"]["ranks"][0]["torch_cpu"])


def _signal_at(monkeypatch, stop_step: int):
    """Deliver a real SIGTERM to this process right after optimizer update ``stop_step``."""
    original = trainer.train_step

    def step_then_signal(run, x):
        loss = original(run, x)
        if run.step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer, "train_step", step_then_signal)


@pytest.mark.parametrize("make_config", [tiny_toy_config, tiny_digits_config])
def test_resume_after_sigterm_is_bit_identical(tmp_path, monkeypatch, make_config):
    config = make_config()
    config.training.n_iters, config.training.checkpoint_freq = 10, 4       # the signal comes at step 5
    n = 5
    assert trainer.train(config, tmp_path / "straight") == {"step": 2 * n, "stopped_by_signal": False}

    _signal_at(monkeypatch, n)
    assert trainer.train(config, tmp_path / "split") == {"step": n, "stopped_by_signal": True}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL            # handlers restored
    monkeypatch.undo()
    assert trainer.train(config, tmp_path / "split") == {"step": 2 * n, "stopped_by_signal": False}

    _assert_same_training_state(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in records if "event" in r] == ["stopped", "finished"]


def test_resume_after_a_corrupted_newest_checkpoint(tmp_path, caplog):
    config = tiny_toy_config()
    trainer.train(config, tmp_path)                                      # checkpoints at 4 and 8
    newest = ckpt.checkpoint_path(tmp_path / "checkpoints", 8)
    newest.write_bytes(newest.read_bytes()[:100])
    config.training.n_iters = 10
    with caplog.at_level(logging.WARNING):
        assert trainer.train(config, tmp_path)["step"] == 10
    assert any(newest.name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)                                        # lines past step 4 were dropped


def test_retention_in_a_training_run(tmp_path):
    config = tiny_toy_config()
    t = config.training
    t.n_iters, t.checkpoint_freq, t.snapshot_freq, t.keep_last = 10, 2, 4, 2
    t.snapshot_sampling, t.snapshot_num_samples = True, 16
    trainer.train(config, tmp_path)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [4, 8, 10]
    snapshots = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snapshots == ["samples_00000004.npz", "samples_00000004.png", "samples_00000008.npz",
                         "samples_00000008.png"]


def test_metrics_lines(tmp_path):
    trainer.train(tiny_toy_config(), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8]
    assert {"loss", "lr", "grad_norm", "steps_per_s"} <= set(train_records[0])
    assert train_records[0]["lr"] == pytest.approx(1e-3)               # warm-up of 2 updates reached
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 8]


# ---------------------------------------------------------------------------------------- run-time
def test_graceful_stop_sets_a_flag_and_restores_handlers():
    previous = signal.getsignal(signal.SIGINT)
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):                           # a second Ctrl-C aborts
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous


def test_gpu_switches_are_ignored_on_cpu_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="training.runtime"):
        accel = resolve_accel(torch.device("cpu"), bf16=True, compile=True, channels_last=False, tf32=True)
    assert not (accel.bf16 or accel.compile or accel.channels_last or accel.tf32)
    assert any("training.bf16, training.compile, training.tf32" in r.getMessage() for r in caplog.records)
    on_gpu = resolve_accel(torch.device("cuda", 0), bf16=True, compile=False, channels_last=True, tf32=True)
    assert on_gpu.bf16 and on_gpu.channels_last and on_gpu.tf32 and not on_gpu.compile


def test_world_of_one_context_is_the_default(tmp_path):
    assert trainer.train(tiny_toy_config(), tmp_path, DistContext())["step"] == 8
