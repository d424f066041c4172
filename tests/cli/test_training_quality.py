"""``training.eval_quality_samples``: a KID or Fréchet distance of fresh samples against the held-out
items at every eval of a training run, in ``metrics.jsonl`` and in its own panel of the loss curve."""
import io
import json

import pytest
from PIL import Image

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.cli.factory import options_from_config
from scoresde.run.plots import loss_curve, quality_keys

QUALITY = {"sampling.method": "fast", "sampling.steps": 3, "sampling.batch_size": 32, "training.n_iters": 4,
           "training.eval_freq": 2, "eval.num_samples": 64}


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("metric, keys", [("kid", ("kid@32", "kid_std@32")), ("fid", ("fd@32",))])
def test_every_eval_writes_the_labelled_metric(tmp_path, metric, keys):
    config = tiny_config("digits/ddpmpp_vp", **QUALITY, **{"training.eval_quality_samples": 32,
                                                            "training.eval_quality_metric": metric})
    main.run(config, tmp_path, "train")
    evals = [r for r in records(tmp_path) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert all(isinstance(r[k], float) for k in keys) and r["quality_features"] == "digits-classifier"
        assert r["quality_reference_items"] == 64
    # 4 steps from random weights: samples are noise, far from the digits (two digit sets score ~0.1 FD)
    assert evals[0][keys[0]] > 1.0
    assert quality_keys(records(tmp_path)) == [keys[0]]


def test_off_by_default_writes_nothing(tmp_path):
    config = tiny_config("digits/ddpmpp_vp", **QUALITY)
    assert config.training.eval_quality_samples == 0
    main.run(config, tmp_path, "train")
    assert not any("@" in key or key.startswith("quality") for r in records(tmp_path) for key in r)


def test_the_loss_curve_gets_a_quality_panel():
    plain = [{"step": s, "loss": 1.0 / s, "eval_loss": 1.2 / s} for s in (1, 2, 3)]
    with_kid = [{**r, "kid@32": 10.0 / r["step"], "kid_std@32": 1.0, "quality_features": "digits-classifier"}
                for r in plain]
    heights = [Image.open(io.BytesIO(loss_curve(rs))).size[1] for rs in (plain, with_kid)]
    assert heights[1] > heights[0]


def test_needs_images():
    with pytest.raises(ValueError, match="eval_quality_samples=8 applies to image data"):
        options_from_config(tiny_config("toy/gmm_vp", **{"training.eval_quality_samples": 8}))
    with pytest.raises(ValueError, match=r"eval_quality_metric must be one of \['kid', 'fid'\], got 'is'"):
        options_from_config(tiny_config("digits/ddpmpp_vp", **{"training.eval_quality_metric": "is"}))


def test_missing_inception_weights_stop_training_before_it_starts(tmp_path):
    from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
    from test_folder_data import write_folder
    config = digits_config()
    d = config.data
    d.dataset, d.root, d.image_size, d.channels = "folder", str(write_folder(tmp_path / "images", 5)), 8, 3
    config.model.attn_resolutions, config.training.batch_size = (), 4
    config.training.eval_quality_samples, config.eval.inception_weights = 8, str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        main.run(config, tmp_path / "run", "train")
    assert not (tmp_path / "run").exists()
