"""``eval.sample_quality``: FD, KID and precision / recall of fresh samples against the held-out digits,
through ``main.run`` (the metrics themselves are proven in ``test_sample_quality.py``)."""
import json

import pytest

from helpers.tiny import tiny_config
from scoresde.cli import main
from test_main_e2e import DIGITS, TOY
from scoresde.cli.factory import options_from_config


def test_eval_reports_sample_quality_and_repeats(tmp_path):
    config = tiny_config("digits/ddpmpp_vp", **DIGITS)
    main.run(config, tmp_path, "train")
    config.eval.sample_quality, config.eval.quality_samples, config.eval.likelihood = True, 40, False
    config.sampling.method, config.sampling.steps = "fast", 4
    first = main.run(config, tmp_path, "eval", outdir=tmp_path / "a")
    second = main.run(config, tmp_path, "eval", outdir=tmp_path / "b")
    for key in ("fd", "kid", "kid_std", "precision", "recall", "classifier_score", "quality_nfe"):
        assert first[key] == second[key], key          # the samples come from the run's seeded stream
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["quality_samples"] == 40
    # 4 training steps: noise, far from the digits. Held-out against training digits scores about 0.1
    # (bench/sample_quality.py's data rows), so a comparison of the real set with itself would fail here
    assert first["fd"] > 1.0
    assert sum(first["class_histogram"]) == pytest.approx(1.0)


def test_sample_quality_needs_images():
    config = tiny_config(**TOY)
    config.eval.sample_quality = True
    with pytest.raises(ValueError, match="sample_quality applies to image data"):
        options_from_config(config)
