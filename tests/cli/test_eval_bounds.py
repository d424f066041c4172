"""``--mode eval`` with likelihood bounds (``config.eval.bounds``): the keys it writes and prints, the config
errors for a bound that does not apply, and determinism given ``config.seed``. The bounds' correctness
against closed forms is ``tests/unit/test_bounds.py``; here the models are tiny and barely trained, and the
sizes are the smallest that exercise every path."""
import json
import math
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.tiny import tiny_config, tiny_flags
from scoresde.cli import main
from scoresde.configs.digits.ddpm_discrete import get_config as ddpm_discrete_config
from test_main_e2e import DIGITS, TOY
from scoresde.cli.factory import options_from_config

# tiny Monte-Carlo sizes: 6 items, 4 ELBO draws, IW_1 and IW_2 from 2 paths of the 50-level chain
BOUNDS = {"eval.bound_items": 6, "eval.elbo_samples": 4, "eval.iw_k": (1, 2), "eval.likelihood": False}


def _keys(unit: str, names) -> list:
    return [f"{n}_{unit}{suffix}" for n in names for suffix in ("", "_stderr", "_mc_stderr")] + \
           [f"{n}_{what}" for n in names for what in ("nfe", "time_s")]


def _bounds_of(metrics: dict) -> dict:
    """The bound values and errors (not the times, which vary)."""
    return {k: v for k, v in metrics.items() if k.split("_")[0] in ("elbo", "vlb", "iw1", "iw2") and "time" not in k}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A tiny continuous-time VP model of the mixture, trained in-process (6 steps)."""
    workdir = tmp_path_factory.mktemp("toy_bounds")
    main.run(tiny_config(**TOY), workdir, "train")
    return workdir


def test_cli_eval_writes_and_prints_every_bound_with_stderr_and_nfe(toy_run):
    result = run_cli(*tiny_flags(**TOY, **BOUNDS, **{"eval.bounds": "all"}), workdir=toy_run, mode="eval")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((toy_run / "eval" / "metrics.json").read_text())
    names = ("elbo", "vlb", "iw1", "iw2")
    for key in _keys("nll", names):                     # continuous data: nats per sample
        assert key in metrics, key
    assert metrics["bound_items"] == 6 and metrics["iw_paths"] == 2
    for name in names:
        assert math.isfinite(metrics[f"{name}_nll"]) and metrics[f"{name}_nll_stderr"] > 0
    assert metrics["elbo_nfe"] == 8 and metrics["vlb_nfe"] == 50 and metrics["iw1_nfe"] == metrics["iw2_nfe"] == 100
    assert metrics["vlb_nll_mc_stderr"] is None        # the exact sum over levels: one draw per level
    assert not any(k.endswith("_bpd") for k in metrics)
    for label in ("ELBO", "DDPM VLB", "IW_1", "IW_2"):  # one summary line each, with its error and cost
        line, = [ln for ln in result.stderr.splitlines() if f"eval: {label} " in ln]
        assert "nll (nats) <= " in line and " +- " in line and "score evaluations per item" in line


def test_bounds_are_deterministic_given_the_seed(toy_run, tmp_path):
    config = tiny_config(**TOY, **BOUNDS, **{"eval.bounds": "elbo,iw"})
    first = _bounds_of(main.run(config, toy_run, "eval", outdir=tmp_path / "a"))
    again = _bounds_of(main.run(config, toy_run, "eval", outdir=tmp_path / "b"))
    assert first == again and "elbo_nll" in first and "iw2_nll" in first
    config.seed += 1                                     # only the bounds' draws change (eval reads the same model)
    other = _bounds_of(main.run(config, toy_run, "eval", outdir=tmp_path / "c"))
    assert other["elbo_nll"] != first["elbo_nll"] and other["iw1_nll"] != first["iw1_nll"]


def test_discrete_ddpm_digits_report_the_vlb_in_bits_per_dim(tmp_path):
    # the tiny network and sizes, on the DDPM chain of 50 levels
    config = tiny_config("digits/ddpm_discrete", **DIGITS, **{"eval.bound_items": 3, "eval.iw_k": (1, 2),
                                                              "eval.likelihood": False,
                                                              "eval.chain_decoder": "discretized"})
    assert options_from_config(config).eval.bounds.names == ("vlb", "iw")
    main.run(config, tmp_path, "train")
    metrics = main.run(config, tmp_path, "eval")
    for key in _keys("bpd", ("vlb", "iw1", "iw2")):
        assert key in metrics, key
    assert "elbo_bpd" not in metrics and metrics["vlb_nfe"] == 50
    # barely trained: far worse than a uniform model, but a finite bound on log P(v)
    assert math.isfinite(metrics["vlb_bpd"]) and metrics["vlb_bpd"] > 0


@pytest.mark.parametrize("change, message", [
    ({"bounds": "elbo"}, r"config\.eval\.bounds='elbo': 'elbo' applies to continuous-time models only .* "
                         r"the bounds that apply to it are vlb, iw"),
    ({"bounds": "vlb,foo"}, r"config\.eval\.bounds: unknown bound 'foo'"),
    ({"bounds": "iw", "iw_k": (1, 3, 10)}, r"config\.eval\.iw_k must be .* got \(1, 3, 10\)"),
    ({"chain_variance": "large"}, r"config\.eval\.chain_variance must be one of"),
])
def test_a_bound_that_does_not_apply_is_a_config_error(change, message):
    config = ddpm_discrete_config()
    for key, value in change.items():
        config.eval[key] = value
    with pytest.raises(ValueError, match=message):
        options_from_config(config)


def test_the_discretized_decoder_needs_image_data_and_all_means_what_applies():
    config = tiny_config(**TOY, **{"eval.bounds": "vlb", "eval.chain_decoder": "discretized"})
    with pytest.raises(ValueError, match=r"config\.eval\.chain_decoder='discretized' applies to image data"):
        options_from_config(config)
    config.eval.chain_decoder, config.eval.bounds = "density", "all"
    assert options_from_config(config).eval.bounds.names == ("elbo", "vlb", "iw")


def test_the_command_line_error_is_one_line(tmp_path):
    result = run_cli("--config=configs/digits/ddpm_discrete.py", "--config.eval.bounds=elbo,vlb", workdir=tmp_path,
                     mode="eval")
    assert result.returncode == 2
    last = result.last_line
    assert last.startswith("main.py: error: invalid config: config.eval.bounds='elbo,vlb': 'elbo' applies to")
    assert not Path(tmp_path / "eval").exists()
