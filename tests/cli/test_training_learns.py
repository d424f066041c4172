"""Tests that fail when training silently stops working: the loss falls and the weights move, the EMA
follows its recursion step by step, evaluation and sampling use the EMA weights (checked by value)
and a resumed run continues from the raw weights.

Mutations these catch (each was tried): no ``loss.backward()``, no optimizer step, the gradient's sign
flipped, the EMA never updated (or updated from the wrong weights), eval / sample / the in-training
held-out loss run on the raw weights, resume loading the EMA into the training network.
"""
import json

import numpy as np
import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.models import get_score_fn
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config
from scoresde.run.generation import generate
from scoresde.evaluate.heldout import heldout_loss
from scoresde.data.pipeline import load_data
from scoresde.data.streams import Stream, generator

STEPS = 40


# plain DSM (a low-variance loss), a checkpoint at every step, held-out losses at steps 20 and 40
LEARNS = {"data.num_train": 4096, "training.batch_size": 128, "training.n_iters": STEPS, "training.log_freq": 10,
          "training.eval_freq": 20, "training.checkpoint_freq": 1, "training.snapshot_freq": 10_000,
          "training.keep_last": 1000, "training.likelihood_weighting": False, "training.importance_sampling": False,
          "model.hidden": 32, "model.ema_rate": 0.9, "optim.lr": 1e-2, "optim.warmup": 0, "eval.num_samples": 128,
          "eval.batch_size": 128, "sampling.steps": 8, "sampling.num_samples": 64, "sampling.batch_size": 64}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 40-step run with a checkpoint at every step."""
    workdir = tmp_path_factory.mktemp("learns")
    config = tiny_config(**LEARNS)
    assert trainer.train(options_from_config(config), workdir)["step"] == STEPS
    return config, workdir


def _state(workdir, step):
    return ckpt.read_checkpoint(ckpt.checkpoint_path(workdir / "checkpoints", step))


def _network(config, weights: dict):
    options = options_from_config(config)
    network = options.network.build((2,))
    network.load_state_dict(weights)
    return options, network


def _fixed_loss(config, weights: dict) -> float:
    """The training loss of ``weights`` on the held-out points with fixed noise."""
    options, network = _network(config, weights)
    data = load_data(options.data, options.seed, with_train=False)
    score_fn = get_score_fn(options.sde.build(), network, train=False, **options.network.score_kwargs)
    return heldout_loss(options.sde.build(), score_fn, options.loss, data.test, data, batch_size=128,
                        generator=generator(options.seed, Stream.EVAL_LOSS), ctx=DistContext())


def _initial_weights(config) -> dict:
    torch.manual_seed(config.seed)                    # as the trainer seeds the initialisation
    return options_from_config(config).network.build((2,)).state_dict()


def test_forty_steps_lower_the_loss_and_move_every_weight(trained):
    config, workdir = trained
    start, end = _initial_weights(config), _state(workdir, STEPS)["model"]
    before, after = _fixed_loss(config, start), _fixed_loss(config, end)
    # measured: 0.92 -> 0.34 (ratio 0.37); a no-op update keeps the ratio at 1 and a sign-flipped one
    # raises it, so 0.6 leaves room both ways
    assert after < 0.6 * before, (before, after)
    trainable = [k for k in start if k != "embed.fourier.W"]       # fixed random Fourier features
    assert min(float((end[k] - start[k]).abs().max()) for k in trainable) > 1e-3
    assert torch.equal(end["embed.fourier.W"], start["embed.fourier.W"])


def test_the_ema_follows_its_recursion_at_every_step(trained):
    """``ema_k = d_k ema_{k-1} + (1 - d_k) w_k`` with the raw weights after update k and
    ``d_k = min(0.9, (1 + k)/(10 + k))`` (score_sde's warm-up)."""
    config, workdir = trained
    ema = _initial_weights(config)
    for k in range(1, STEPS + 1):
        state = _state(workdir, k)
        d = min(0.9, (1 + k) / (10 + k))
        ema = {name: torch.lerp(ema[name], state["model"][name], 1 - d) for name in ema}
        assert state["ema"]["num_updates"] == k
        for name in ema:   # float32 rounding of 40 recursive lerps
            torch.testing.assert_close(state["ema"]["shadow"][name], ema[name], rtol=0, atol=1e-6)
    final = _state(workdir, STEPS)
    assert any(not torch.allclose(final["ema"]["shadow"][k], final["model"][k]) for k in final["model"])


def test_in_training_eval_loss_uses_the_ema_weights(trained):
    config, workdir = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert sorted(logged) == [20, 40]
    for step, value in logged.items():
        state = _state(workdir, step)
        assert value == pytest.approx(_fixed_loss(config, state["ema"]["shadow"]), rel=1e-6)
        assert value != pytest.approx(_fixed_loss(config, state["model"]), rel=1e-3)


def test_eval_and_sample_use_the_ema_weights(trained, tmp_path):
    config, workdir = trained
    state = _state(workdir, STEPS)
    metrics = main.run(config, workdir, "eval")
    assert metrics["loss"] == pytest.approx(_fixed_loss(config, state["ema"]["shadow"]), rel=1e-6)
    assert metrics["loss"] != pytest.approx(_fixed_loss(config, state["model"]), rel=1e-3)

    main.run(config, workdir, "sample")
    samples = torch.from_numpy(np.load(workdir / "samples" / "samples.npz")["samples"])

    def draw(weights):
        options, network = _network(config, weights)
        score_fn = get_score_fn(options.sde.build(), network, train=False, **options.network.score_kwargs)
        x, _ = generate(options.sde.build(), score_fn, 64, (2,), options.sampler,
                        generator=generator(options.seed, Stream.SAMPLING), ctx=DistContext())
        return x

    torch.testing.assert_close(samples, draw(state["ema"]["shadow"]), rtol=0, atol=1e-6)
    assert not torch.allclose(samples, draw(state["model"]), atol=1e-3)


def test_resume_continues_from_the_raw_weights(trained):
    config, workdir = trained
    state = _state(workdir, STEPS)
    run = trainer.setup_run(options_from_config(config), workdir, DistContext())
    assert run.step == STEPS
    for name, value in run.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    for name, value in run.ema.module.state_dict().items():
        assert torch.equal(value, state["ema"]["shadow"][name]), name
    run.metrics.close()
