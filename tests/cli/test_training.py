"""The training driver: config validation, warm-up and clipping numbers, exact resume after a signal,
checkpoint retention, metrics and the CPU handling of GPU switches."""
import copy
import dataclasses
import json
import logging
import os
import signal

import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config
from scoresde.cli.validate import validate_config
from scoresde.train.optim import build_optimizer, clip_gradients, optimize_step, warmup_lr
from scoresde.run.options import Accel
from scoresde.run.runtime import GracefulStop, resolve_accel


def train(config, workdir, ctx=None):
    return trainer.train(options_from_config(config), workdir, ctx)




# the predictor-corrector options these tests check; held-out losses and checkpoints every 4 steps
TOY = {"training.eval_freq": 4, "training.checkpoint_freq": 4, "training.keep_last": 3, "eval.num_samples": 64,
       "eval.batch_size": 64, "sampling.method": "pc", "sampling.steps": 50, "sampling.num_samples": 32,
       "sampling.batch_size": 32}
# a 1-level U-Net with dropout, flips and dequantisation: every random stream in use
DIGITS = {"data.num_train": 256, "data.random_flip": True, "training.n_iters": 6, "training.eval_freq": 3,
          "training.checkpoint_freq": 3, "training.snapshot_num_samples": 36, "eval.num_samples": 16,
          "eval.batch_size": 16}


def tiny_toy_config():
    return tiny_config(**TOY)


def tiny_digits_config():
    return tiny_config("digits/ddpmpp_vp", **DIGITS)


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("path, value, message", [
    ("training.sde", "vpsdee", r"config\.training\.sde must be one of \[.*'vpsde'"),
    ("sampling.predictor", "magic", r"config\.sampling\.predictor must be one of \[.*'euler_maruyama'"),
    ("sampling.method", "gibbs", r"config\.sampling\.method must be one of \['consistency', 'ddim', 'ddpm', 'edm', 'fast', 'ode', 'pc'\]"),
    ("sampling.order", 7, r"config\.sampling\.order must be one of \[1, 2, 3\], got 7"),
    ("sampling.ode_method", "foo", r"config\.sampling\.ode_method must be one of \[.*'dopri5'"),
    ("eval.trace", "hutch", r"config\.eval\.trace must be one of"),
    ("eval.method", "euler", r"config\.eval\.method must be one of"),
    ("data.dataset", "imagenet", r"config\.data\.dataset must be one of \[.*'checkerboard'"),
    ("model.name", "resnet", r"config\.model\.name must be one of \['classifier_mlp', 'classifier_unet', 'ddpmpp', 'mlp', 'ncsnpp'\]"),
    ("training.batch_size", 0, r"config\.training\.batch_size must be an integer >= 1, got 0"),
    ("training.n_iters", True, r"config\.training\.n_iters must be an integer >= 0, got True"),
    ("model.hidden", 0, r"config\.model\.hidden must be an integer >= 1, got 0"),
    ("model.ema_rate", 1.5, r"config\.model\.ema_rate must be .*1\.5"),
    ("optim.lr", -1.0, r"config\.optim\.lr must be .*-1\.0"),
    ("training.eps", 1.0, r"config\.training\.eps must be .*1\.0"),
    ("model.ch_mult", (1, 0), r"config\.model\.ch_mult must be a tuple of integers >= 1"),
    ("training.continuous", False, r"config\.training\.continuous must be True for training\.loss='dsm'"),
    ("training.likelihood_weighting", False, r"importance_sampling=True requires training\.likelihood_weighting"),
    ("model.beta_max", 0.05, r"config\.model\.beta_max must be > model\.beta_min"),
])
def test_validation_names_the_field(path, value, message):
    config = tiny_toy_config()
    section, name = path.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_unknown_and_missing_fields_are_named():
    config = tiny_toy_config()
    config.training.foo = 3
    with pytest.raises(ValueError, match=r"config\.training\.foo is not a config field.*'batch_size'"):
        validate_config(config)
    config = tiny_toy_config()
    del config.model["nf"]
    with pytest.raises(ValueError, match=r"config\.model\.nf is missing"):
        validate_config(config)
    with pytest.raises(ValueError, match="ml_collections.ConfigDict"):
        validate_config({"training": {}})


def test_every_field_is_mapped_and_every_mapped_field_exists():
    """No field of configs/default.py is dead, and every field the mapping reads exists."""
    from scoresde.cli.schema import NETWORK_ARGS, SDE_ARGS, schema_fields
    fields = set(schema_fields())
    mapped = {f for table in (*NETWORK_ARGS.values(), *SDE_ARGS.values()) for f in table.values()}
    assert mapped <= fields
    model_fields = {f for f in fields if f.startswith("model.")}
    read_elsewhere = {"model.name", "model.ema_rate", "model.parameterization", "model.scale_by_sigma",
                      "model.sigma_data", "model.pretrained", "model.pretrained_config"}
    assert model_fields == mapped | read_elsewhere
    # every other section's fields reach the options: change each, and the options change
    def plain(config):                                     # the options without the config's own text
        return dataclasses.replace(options_from_config(config, distill=True), config_json="")

    def edm_config():                                      # the fields only EDM's loss reads
        from scoresde.configs.toy.gmm_edm import get_config
        config = get_config()
        config.model.hidden, config.model.n_blocks = 16, 1
        return config

    def hybrid_config():                                   # the field only the hybrid loss reads
        return tiny_config(**TOY, **{"training.loss": "hybrid", "training.continuous": False,
                                     "training.likelihood_weighting": False, "training.importance_sampling": False,
                                     "model.learn_variance": True, "model.embedding_type": "positional"})

    edm_only = {"training.p_mean", "training.p_std"}
    hybrid_only = {"training.vlb_weight"}
    for path in sorted(fields - model_fields):
        make = edm_config if path in edm_only else hybrid_config if path in hybrid_only else tiny_toy_config
        base, config = plain(make()), make()
        section, _, name = path.rpartition(".")
        node = config[section] if section else config
        default = node[name]
        node[name] = _another_valid_value(path, default)
        if node[name] == default or not _combination_ok(config):
            continue                                       # a one-value field (optim.optimizer)
        assert plain(config) != base, f"config.{path} reaches no option"


def _another_valid_value(path, default):
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2
    return {"training.sde": "subvpsde", "training.loss": "dsm", "data.dataset": "checkerboard",
            "data.root": "elsewhere", "device": "cpu", "sampling.method": "fast",
            "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
            "sampling.ode_method": "rk4", "eval.trace": "gaussian", "eval.method": "bosh3",
            "optim.optimizer": "adam", "sampling.mask": "right_half", "sampling.inpaint_method": "repaint",
            "sampling.inpaint_data": "items.npz", "sampling.classifier_workdir": "classifier",
            "model.pretrained": "model_dir", "model.pretrained_config": "config.json",
            "sampling.ddpm_variance": "forward"}.get(path, default)


def _combination_ok(config):
    try:
        validate_config(config)
        return True
    except ValueError:
        return False


def test_combinations_that_cannot_work_are_rejected():
    config = tiny_toy_config()
    validate_config(config)
    config.training.loss, config.training.continuous = "ddpm", False     # discrete labels start at 0
    config.training.likelihood_weighting = config.training.importance_sampling = False
    with pytest.raises(ValueError, match=r"config\.model\.embedding_type='fourier'.*use 'positional'"):
        validate_config(config)
    config.model.embedding_type = "positional"
    validate_config(config)
    config = tiny_toy_config()
    config.training.sde = "cosine_vpsde"
    config.model.beta_max = 0.01                                       # not read by cosine, still rejected
    with pytest.raises(ValueError, match=r"config\.model\.beta_max must be > model\.beta_min"):
        validate_config(config)
    config = tiny_toy_config()
    config.sampling.predictor, config.sampling.corrector = "none", "none"
    with pytest.raises(ValueError, match=r"config\.sampling \(method 'pc'\): predictor and corrector cannot both"):
        validate_config(config)
    config = tiny_toy_config()
    config.sampling.predictor, config.sampling.probability_flow = "ancestral_sampling", True
    with pytest.raises(ValueError, match=r"config\.sampling \(method 'pc'\): probability_flow"):
        validate_config(config)
    config = tiny_toy_config()
    config.model.name = "ddpmpp"                                       # an image network on 2-D points
    with pytest.raises(ValueError, match=r"config\.model\.name='ddpmpp' takes images"):
        validate_config(config)
    config = digits_config()
    config.model.attn_resolutions = (5,)                               # the network's own checks, up front
    with pytest.raises(ValueError, match=r"config\.model \(ddpmpp\): attn_resolutions must be among"):
        validate_config(config)
    config = digits_config()
    config.model.scale_by_sigma = True                                 # VP predicts eps, not a score
    with pytest.raises(ValueError, match=r"scale_by_sigma=True applies to a 'score' output"):
        validate_config(config)


def test_every_shipped_config_validates():
    from scoresde.configs.cifar10 import ddpmpp_edm, ddpmpp_subvp, ddpmpp_vp, ncsnpp_ve
    from scoresde.configs.digits import ddpmpp_edm as digits_edm
    from scoresde.configs.digits import ddpmpp_flow as digits_flow
    from scoresde.configs.digits import ncsnpp_ve as digits_ve
    from scoresde.configs.toy import checkerboard_vp, gmm_edm, gmm_flow, gmm_subvp, gmm_ve
    for module in (ddpmpp_vp, ddpmpp_subvp, ncsnpp_ve, ddpmpp_edm, digits_ve, digits_flow, digits_edm,
                   checkerboard_vp, gmm_subvp, gmm_ve, gmm_flow, gmm_edm):
        validate_config(module.get_config())
    validate_config(digits_config())
    validate_config(gmm_config())


def test_options_are_frozen_plain_values():
    options = options_from_config(tiny_toy_config())
    with pytest.raises(Exception):
        options.train.n_iters = 5
    with pytest.raises(TypeError):
        options.network.kwargs["hidden"] = 3
    assert options.sampler.kwargs == {"predictor": "euler_maruyama", "corrector": "none", "snr": 0.16,
                                      "n_steps": 1, "probability_flow": False, "denoise": True, "eps": 1e-3}
    assert dict(options.network.kwargs) == {"hidden": 16, "n_blocks": 1, "embedding_type": "fourier",
                                            "fourier_scale": 16.0, "num_classes": 0}


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
    opt = torch.optim.SGD([p], lr=123.0, fused=True)
    p.grad = torch.tensor([30.0, 40.0])
    lr, norm, skipped = optimize_step(opt, [p], update=2, lr=1.0, warmup=4, grad_clip=1.0)
    assert lr == 0.5 and opt.param_groups[0]["lr"] == 0.5 and float(norm) == pytest.approx(50.0)
    assert torch.allclose(p.data, torch.tensor([-0.3, -0.4]))          # lr 0.5 x clipped grad (0.6, 0.8)
    assert not skipped


@pytest.mark.parametrize("bad", ["grad", "loss"])
def test_a_non_finite_step_leaves_weights_and_adam_state_untouched(bad):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    optimize_step(opt, list(model.parameters()), update=1, lr=0.1, warmup=0, grad_clip=1.0)
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    loss = model(torch.randn(4, 3)).pow(2).mean()
    loss.backward()
    if bad == "grad":
        model.weight.grad[0, 0] = float("nan")
    else:
        loss = loss * float("inf")
    _, _, skipped = optimize_step(opt, list(model.parameters()), update=2, lr=0.1, warmup=0, grad_clip=1.0,
                                  loss=loss)
    assert bool(skipped)
    after = (model.state_dict(), opt.state_dict())
    assert all(torch.equal(before[0][k], after[0][k]) for k in after[0])
    for key, state in after[1]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, before[1]["state"][key][name]), name      # moments and step count


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

    def step_then_signal(run, x, labels=None):
        loss = original(run, x, labels)
        if run.step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(trainer, "train_step", step_then_signal)


@pytest.mark.parametrize("make_config", [tiny_toy_config, tiny_digits_config])
def test_resume_after_sigterm_is_bit_identical(tmp_path, monkeypatch, make_config):
    config = make_config()
    config.training.n_iters, config.training.checkpoint_freq = 10, 4       # the signal comes at step 5
    n = 5
    assert train(config, tmp_path / "straight") == {"step": 2 * n, "stopped_by_signal": False, "signal": None}

    _signal_at(monkeypatch, n)
    assert train(config, tmp_path / "split") == {"step": n, "stopped_by_signal": True, "signal": signal.SIGTERM}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL            # handlers restored
    monkeypatch.undo()
    assert train(config, tmp_path / "split") == {"step": 2 * n, "stopped_by_signal": False, "signal": None}

    _assert_same_training_state(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in records if "event" in r] == ["stopped", "finished"]


def test_resume_after_a_corrupted_newest_checkpoint(tmp_path, caplog):
    config = tiny_toy_config()
    train(config, tmp_path)                                      # checkpoints at 4 and 8
    newest = ckpt.checkpoint_path(tmp_path / "checkpoints", 8)
    newest.write_bytes(newest.read_bytes()[:100])
    config.training.n_iters = 10
    with caplog.at_level(logging.WARNING):
        assert train(config, tmp_path)["step"] == 10
    assert any(newest.name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)                                        # lines past step 4 were dropped


def test_retention_in_a_training_run(tmp_path):
    config = tiny_toy_config()
    t = config.training
    t.n_iters, t.checkpoint_freq, t.snapshot_freq, t.keep_last = 10, 2, 4, 2
    t.snapshot_sampling, t.snapshot_num_samples = True, 16
    train(config, tmp_path)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [4, 8, 10]
    snapshots = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert snapshots == ["samples_00000004.npz", "samples_00000004.png", "samples_00000008.npz",
                         "samples_00000008.png"]


def test_metrics_lines(tmp_path):
    train(tiny_toy_config(), tmp_path)
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


def test_cuda_only_switches_are_ignored_on_cpu_with_a_log_line(caplog):
    with caplog.at_level(logging.INFO, logger="scoresde.run.runtime"):
        accel = resolve_accel(torch.device("cpu"), Accel(bf16=True, compile=True, channels_last=True, tf32=True))
    assert accel == Accel(bf16=True, compile=True)                      # these two run on a CPU as well
    assert any("CUDA-only options ignored: training.channels_last, training.tf32" in r.getMessage()
               for r in caplog.records)
    on_gpu = resolve_accel(torch.device("cuda", 0), Accel(bf16=True, compile=False, channels_last=True, tf32=True))
    assert on_gpu.bf16 and on_gpu.channels_last and on_gpu.tf32 and not on_gpu.compile


def test_world_of_one_context_is_the_default(tmp_path):
    assert train(tiny_toy_config(), tmp_path, DistContext())["step"] == 8


def test_thread_policy_takes_the_free_cores(monkeypatch):
    from scoresde.run import runtime
    monkeypatch.setattr(runtime, "available_cores", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.choose_threads(3)[0] == 3                              # asked for
    assert runtime.choose_threads(0, busy=0.0)[0] == 4                    # a quiet machine: every core
    assert runtime.choose_threads(0, busy=2.2)[0] == 2                    # two cores busy elsewhere
    assert runtime.choose_threads(0, busy=3.9)[0] == 1                    # never fewer than one
    assert runtime.choose_threads(0, local_processes=2, busy=0.0)[0] == 2  # torchrun shares the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    threads, why = runtime.choose_threads(0, busy=0.0)
    assert threads == 3 and why == "OMP_NUM_THREADS"
    assert runtime.busy_cores(0.05) >= 0.0
