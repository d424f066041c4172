"""Class-conditional training with label dropout, noise-conditional classifiers trained by ``main.py``,
and the guided ``sample``, ``inpaint`` and ``colorize`` modes, on the 2-D mixture (whose class of a
point, its nearest mode, is exact) and tiny image models.

The library's guidance and imputation are proven against closed forms in ``test_guidance.py`` and
``test_inpaint.py``; here the question is whether the command line wires them up right: labels reach
the network aligned with their points, dropout is drawn from the step's seeded stream (so two ranks and
a resumed run stay exact), the classifier is trained on perturbed data, and the modes pick the right
scores.
"""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_utils import run_ranks
from helpers.data import write_cifar
from helpers.tiny import apply, tiny_config
from scoresde.cli import main
from scoresde.models import null_label
from test_ddp_training import _assert_close_states, _state, _train_worker, ddp_config
from scoresde.train import loop as trainer
from scoresde.train.conditioning import draw_drop, drop_labels
from scoresde.data.datasets import get_toy_dataset
from scoresde.cli.factory import options_from_config
from scoresde.run.inference import load_classifier
from scoresde.run.distributed import DistContext

STEPS = 6


def cond_tiny(n_iters: int = STEPS, dropout: float = 0.5):
    config = ddp_config(n_iters)
    config.model.num_classes = 8
    config.training.label_dropout = dropout
    return config


# ---------------------------------------------------------------------------------------- exactness
def test_label_dropout_draws_and_null_label():
    gen = torch.Generator().manual_seed(0)
    drop = draw_drop(200_000, 0.2, gen, "cpu")
    # binomial standard error sqrt(0.2 * 0.8 / 2e5) = 9e-4: 5 sigma
    assert abs(float(drop.double().mean()) - 0.2) < 4.5e-3
    labels = torch.arange(8).repeat(3)
    dropped = drop_labels(labels, torch.arange(24) % 2 == 0, 8)
    assert torch.equal(dropped[1::2], labels[1::2]) and bool((dropped[0::2] == null_label(8)).all())


def test_conditional_two_ranks_and_resume_are_exact(tmp_path):
    """Label dropout is drawn for the global batch from the step's noise stream: two ranks reach the
    weights of one (to DDP's all-reduce rounding, as for unconditional models), and a run stopped at
    step 3 and resumed is bit-identical to an uninterrupted one."""
    trainer.train(options_from_config(cond_tiny()), tmp_path / "ref")
    run_ranks(_train_worker, 2, cond_tiny(), tmp_path / "two", None)
    _assert_close_states(_state(tmp_path / "ref", STEPS), _state(tmp_path / "two", STEPS))
    trainer.train(options_from_config(cond_tiny(3)), tmp_path / "resumed")
    trainer.train(options_from_config(cond_tiny()), tmp_path / "resumed")
    a, b = _state(tmp_path / "ref", STEPS), _state(tmp_path / "resumed", STEPS)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # and the dropout matters: another probability trains other weights
    trainer.train(options_from_config(cond_tiny(dropout=0.1)), tmp_path / "other")
    c = _state(tmp_path / "other", STEPS)
    assert any(not torch.equal(a["model"][k], c["model"][k]) for k in a["model"])


# ---------------------------------------------------------------------------------------- learning
# a small MLP on 20 000 points, long enough to learn the classes; sampled in 8 steps of DPM-Solver++
LEARNING = {"device": "cpu", "data.num_train": 20_000, "training.batch_size": 256, "training.log_freq": 100,
            "training.keep_last": 3, "training.snapshot_freq": 10**6, "model.hidden": 64, "model.n_blocks": 2,
            "model.num_scales": 100, "optim.warmup": 50, "eval.num_samples": 400, "eval.batch_size": 400,
            "eval.true_nll_samples": 100_000, "sampling.steps": 8, "sampling.solver": "dpmsolver++",
            "sampling.num_samples": 800, "sampling.batch_size": 800}


def _toy(workdir: Path, *, n_iters: int, **fields):
    """``LEARNING`` for ``n_iters`` steps (one checkpoint, at the end), then ``fields`` (``section__name``)."""
    return tiny_config(**LEARNING, **{"training.n_iters": n_iters, "training.checkpoint_freq": n_iters}, **fields)


def _sample(config, workdir: Path, outdir: Path, **fields) -> dict:
    config = apply(copy.deepcopy(config), **fields)
    main.run(config, workdir, "sample", outdir=outdir)
    return json.loads((outdir / "info.json").read_text())


@pytest.fixture(scope="module")
def cond_model(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cond") / "run"
    config = _toy(workdir, n_iters=600, model__num_classes=8, training__label_dropout=0.2)
    main.run(config, workdir, "train")
    return config, workdir


def test_conditional_model_samples_the_requested_class(cond_model, tmp_path):
    """600 steps of a small MLP: samples of class k land on mode k. A model whose labels were not
    passed, or not aligned with their points, would be right 1/8 of the time; the unconditional
    (null-label) samples spread over all modes."""
    config, workdir = cond_model
    info = _sample(config, workdir, tmp_path / "k", sampling__label="3")
    # measured 0.89 (one class) to 0.99 after 600 steps; chance is 1/8 +- 0.012 (800 samples)
    assert info["class_accuracy"] > 0.8 and info["class_judge"] == "exact"
    npz = np.load(tmp_path / "k" / "samples.npz")
    assert npz["samples"].shape == (800, 2) and bool((npz["labels"] == 3).all())
    info = _sample(config, workdir, tmp_path / "all", sampling__label="all", sampling__num_samples=800)
    assert info["class_accuracy"] > 0.8
    _sample(config, workdir, tmp_path / "none", sampling__label="")
    points = torch.from_numpy(np.load(tmp_path / "none" / "samples.npz")["samples"]).double()
    counts = torch.bincount(get_toy_dataset("gmm").labels(points), minlength=8).double()
    # the null label sees 1/5 of the 600 updates, so its mode weights are rough (measured 34-293 of
    # 800 where 100 is exact), but it covers every mode, unlike any one class (> 80% on one mode)
    assert bool((counts >= 16).all()) and bool((counts < 400).all()), counts


def test_classifier_free_guidance_raises_class_purity(cond_model, tmp_path):
    config, workdir = cond_model
    acc = {w: _sample(config, workdir, tmp_path / str(w), sampling__label="all", sampling__guidance="cfg",
                      sampling__guidance_scale=w)["class_accuracy"] for w in (0.0, 1.0, 3.0)}
    # w = 0 is the unconditional model: 1/8 of samples on the requested mode (+- 0.012, 5 sigma 0.06)
    assert abs(acc[0.0] - 0.125) < 0.06
    assert acc[3.0] >= acc[1.0] - 0.01 and acc[1.0] > 0.8


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("clf") / "run"
    config = _toy(workdir, n_iters=400, model__name="classifier_mlp", model__num_classes=8,
                  training__loss="classifier", training__likelihood_weighting=False,
                  training__importance_sampling=False)
    main.run(config, workdir, "train")
    return config, workdir


def _bayes_accuracy(t: float, n: int = 20_000) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Accuracy of the exact ``p_t(y | x_t)`` of the VP-perturbed mixture: components
    ``N(alpha mu_k, (alpha^2 0.1^2 + sigma^2) I)`` with equal weights, so the Bayes rule picks the
    nearest scaled mode. Also the points and their labels."""
    from scoresde.sde_lib import VPSDE
    dist = get_toy_dataset("gmm")
    gen = torch.Generator().manual_seed(1)
    x0 = dist.sample(n, generator=gen, dtype=torch.float64)
    y = dist.labels(x0)
    mean, std = VPSDE().marginal_prob(x0, torch.full((n,), t, dtype=torch.float64))
    xt = mean + std[:, None] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    alpha = float(mean[0].norm() / x0[0].norm())
    bayes = ((xt[:, None, :] - alpha * dist.means(dtype=torch.float64)[None]) ** 2).sum(-1).argmin(1)
    return float((bayes == y).double().mean()), xt.float(), y


def test_classifier_trained_by_main_reaches_bayes_accuracy(classifier):
    config, workdir = classifier
    loaded = load_classifier(workdir, options_from_config(config), DistContext())
    assert loaded.num_classes == 8
    for t in (0.1, 0.5, 0.8):
        bayes, xt, y = _bayes_accuracy(t)
        with torch.no_grad():
            acc = float((loaded.logits_fn(xt, torch.full((len(xt),), t)).argmax(1) == y).double().mean())
        # Bayes accuracy 0.97 / 0.23 / 0.14 (+- 0.004 from 20 000 points): the classifier is within
        # 0.05 of the best possible at each noise level (a label permutation scores ~0 at t = 0.1)
        assert acc > bayes - 0.05, (t, acc, bayes)


def test_classifier_eval_mode(classifier, tmp_path):
    config, workdir = classifier
    main.run(config, workdir, "eval", outdir=tmp_path / "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for t in (0.01, 0.25, 0.5, 0.75):
        # within 0.08 of the Bayes accuracy (1.00 / 0.58 / 0.23 / 0.14): 400 items give +- 0.025
        assert abs(metrics[f"accuracy_t{t:g}"] - _bayes_accuracy(t)[0]) < 0.08, t
    assert metrics["loss"] > 0 and "cross-entropy" in metrics["loss_is"]
    with pytest.raises(ValueError, match="classifier"):
        main.run(config, workdir, "sample", outdir=tmp_path / "s")


def test_classifier_guidance_from_the_command_line(classifier, tmp_path):
    clf_config, clf_workdir = classifier
    workdir = tmp_path / "uncond"
    config = _toy(workdir, n_iters=300)
    main.run(config, workdir, "train")
    unguided = _sample(config, workdir, tmp_path / "u", sampling__label="2", sampling__guidance="classifier",
                       sampling__classifier_workdir=str(clf_workdir), sampling__guidance_scale=0.0)
    guided = _sample(config, workdir, tmp_path / "g", sampling__label="2", sampling__guidance="classifier",
                     sampling__classifier_workdir=str(clf_workdir), sampling__guidance_scale=4.0)
    # scale 0 is the unconditional model: 1/8 +- 0.012; guided measured 0.9
    assert abs(unguided["class_accuracy"] - 0.125) < 0.06
    assert guided["class_accuracy"] > 0.6


def test_inpaint_mode_keeps_known_entries(cond_model, tmp_path):
    config, workdir = copy.deepcopy(cond_model[0]), cond_model[1]
    config.sampling.mask, config.sampling.num_samples, config.sampling.batch_size = "random:0.5", 200, 100
    config.sampling.label = ""
    main.run(config, workdir, "inpaint", outdir=tmp_path / "out")
    npz = np.load(tmp_path / "out" / "inpaint.npz")
    known = npz["mask"]
    assert npz["completed"].shape == npz["original"].shape == known.shape == (200, 2)
    assert np.array_equal(npz["completed"][known], npz["original"][known])
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    # half the coordinates of a 2-D point on a ring of 8 tight modes: the other one is nearly
    # determined (two candidate modes at most), so most completions stay on the true mode
    assert info["completed_class_accuracy"] > 0.4 and info["original_class_accuracy"] == 1.0
    assert (tmp_path / "out" / "inpaint.png").stat().st_size > 1000


# ---------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("fields, message", [
    ({"sampling__label": "3"}, "needs a class-conditional model"),
    ({"model__num_classes": 8, "sampling__label": "8"}, "class index in [0, 8)"),
    ({"model__num_classes": 8, "sampling__label": "1", "sampling__guidance": "cfg"}, "label dropout"),
    ({"sampling__label": "1", "sampling__guidance": "classifier"}, "classifier_workdir"),
    ({"model__num_classes": 8, "sampling__guidance": "cfg", "training__label_dropout": 0.1}, "set sampling.label"),
    ({"model__num_classes": 5}, "must be 8"),
    ({"training__label_dropout": 0.1}, "needs a class-conditional score model"),
    ({"model__name": "classifier_mlp", "model__num_classes": 8}, "training.loss='classifier'"),
    ({"training__label_dropout": 1.0, "model__num_classes": 8}, "label_dropout"),
    ({"sampling__threshold": 0.995, "sampling__method": "pc"}, "applies to sampling.method 'fast' or 'ddim'"),
    ({"sampling__threshold": 99.5}, "threshold"),
])
def test_bad_conditioning_is_a_config_error(fields, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        options_from_config(_toy(tmp_path, n_iters=1, **fields))


def test_mode_errors_are_one_line(cond_model, tmp_path):
    config, workdir = copy.deepcopy(cond_model[0]), cond_model[1]
    config.sampling.mask = "lower_half"
    with pytest.raises(ValueError, match="needs images"):
        main.run(config, workdir, "inpaint", outdir=tmp_path / "a")
    with pytest.raises(ValueError, match="colour"):
        main.run(config, workdir, "colorize", outdir=tmp_path / "b")


def test_colorize_mode_on_colour_images(tmp_path):
    """A tiny CIFAR-10 model (random batches written like the real files, 2 steps): ``--mode colorize``
    returns colour images whose grey level (the channel mean, score_sde's convention) is the input's
    to float round-off, and writes the sheet."""
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=8)
    config = tiny_config("cifar10/ddpmpp_vp", data__root=str(tmp_path / "data"))
    main.run(config, tmp_path / "run", "train")
    main.run(config, tmp_path / "run", "colorize", outdir=tmp_path / "out")
    npz = np.load(tmp_path / "out" / "colorize.npz")
    completed, original = npz["completed"], npz["original"]
    assert completed.shape == original.shape == (4, 3, 32, 32)
    # the grey level is kept exactly in model space; in [0, 1] up to the clip of out-of-range colours
    inside = (completed > 0) & (completed < 1)
    grey_ok = np.abs(completed.mean(1) - original.mean(1)) < 1e-5
    assert grey_ok[inside.all(1)].all()
    assert (tmp_path / "out" / "colorize.png").stat().st_size > 1000


def test_unlabelled_sampling_needs_label_dropout(tmp_path):
    """Without label dropout a class-conditional network has no score of p(x): sampling or evaluating
    it without labels is a one-line error, not samples from an untrained null embedding."""
    config = cond_tiny(dropout=0.0)
    trainer.train(options_from_config(config), tmp_path / "run")
    with pytest.raises(ValueError, match="without label dropout"):
        main.run(config, tmp_path / "run", "sample", outdir=tmp_path / "s")
    with pytest.raises(ValueError, match="without label dropout"):
        main.run(config, tmp_path / "run", "eval", outdir=tmp_path / "e")
    config.sampling.label = "2"
    info = main.run(config, tmp_path / "run", "sample", outdir=tmp_path / "s2")
    assert info["num_samples"] == config.sampling.num_samples and info["label"] == 2
