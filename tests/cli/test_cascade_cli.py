"""Cascaded super-resolution from the command line, in process, with tiny digits configs: a 4x4 base model
and a 4 -> 8 super-resolution model (``configs/digits/cascade_base.py`` / ``cascade_sr.py``) trained a few
steps; ``--mode sample`` with ``sampling.cascade`` feeds the base's samples to the SR model, with
``sampling.low_res_from=heldout`` the held-out items' low-res views; noise-conditioning augmentation
resumes exactly; bad pairings are one-line errors naming the field."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.tiny import tiny_config
from scoresde.cli.factory import options_from_config
from scoresde.cli.main import run
from scoresde.models.image_cond import downsample
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer

SAMPLING = {"sampling.method": "fast", "sampling.steps": 3}


def sr_config(**overrides):
    return tiny_config("digits/cascade_sr", **{"training.n_iters": 2, **SAMPLING, **overrides})


def base_config(**overrides):
    return tiny_config("digits/cascade_base", **{"training.n_iters": 2, **SAMPLING, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    run(base_config(), root / "base", "train")
    run(sr_config(), root / "sr", "train")
    return root


def _npz(directory) -> dict:
    return dict(np.load(directory / "samples.npz"))


def test_cascade_feeds_the_base_samples_to_the_sr_model_and_draws_each_stage(trained, tmp_path):
    config = sr_config(**{"sampling.cascade": f"{trained / 'base'},{trained / 'sr'}"})
    info = run(config, trained / "sr", "sample", outdir=tmp_path / "cascade")
    got = _npz(tmp_path / "cascade")
    assert got["samples"].shape == (4, 1, 8, 8) and got["low_res"].shape == (4, 1, 4, 4)
    assert info["conditions"] == "cascade" and info["nonfinite_samples"] == 0
    for name in ("stage1_base.png", "samples.png"):
        with Image.open(tmp_path / "cascade" / name) as image:
            assert image.size[0] > 50 and image.size[1] > 50
    # the conditions are the base model's own samples: --mode sample of the base alone (same seed, same
    # sampler, the same stream) draws exactly them
    run(base_config(), trained / "base", "sample", outdir=tmp_path / "base")
    np.testing.assert_array_equal(_npz(tmp_path / "base")["samples"], got["low_res"])


def test_heldout_super_resolution_reports_its_accuracy(trained, tmp_path):
    info = run(sr_config(**{"sampling.low_res_from": "heldout"}), trained / "sr", "sample", outdir=tmp_path)
    got = _npz(tmp_path)
    assert set(got) == {"samples", "low_res", "original"} and got["original"].shape == (4, 1, 8, 8)
    # the conditions are the originals' 4x4 block means (float32 round-off)
    np.testing.assert_allclose(downsample(torch.from_numpy(got["original"]), 4).numpy(), got["low_res"], atol=1e-6)
    for key in ("sr_mse", "sr_psnr", "sr_consistency_mae", "upsampled_mse", "sr_class_accuracy",
                "upsampled_class_accuracy", "original_class_accuracy"):
        assert np.isfinite(info[key]), key
    assert info["sr_mse"] == pytest.approx(float(((got["samples"] - got["original"]) ** 2).mean()), rel=1e-5)
    for name in ("low_res.png", "samples.png", "original.png"):
        assert (tmp_path / name).is_file()


def test_classifier_free_guidance_on_the_image_condition(trained, tmp_path):
    """CFG mixes the conditional score with the null condition's: at w = 3 the samples differ from the
    unguided ones drawn from the same noise, and they are finite."""
    plain = run(sr_config(**{"sampling.low_res_from": "heldout"}), trained / "sr", "sample", outdir=tmp_path / "a")
    guided = run(sr_config(**{"sampling.low_res_from": "heldout", "sampling.guidance": "cfg",
                              "sampling.guidance_scale": 3.0}), trained / "sr", "sample", outdir=tmp_path / "b")
    assert guided["guidance"] == "cfg" and plain["nonfinite_samples"] == guided["nonfinite_samples"] == 0
    assert not np.array_equal(_npz(tmp_path / "a")["samples"], _npz(tmp_path / "b")["samples"])


def test_noise_augmentation_resumes_exactly(tmp_path):
    """4 steps at once, or 2 then a resume to 4, with augmentation and condition dropout: the same weights
    (every draw comes from the per-step NOISE stream)."""
    fields = {"training.cond_noise_max": 0.5, "training.label_dropout": 0.5, "training.checkpoint_freq": 2}
    trainer.train(options_from_config(sr_config(**fields, **{"training.n_iters": 4})), tmp_path / "straight")
    trainer.train(options_from_config(sr_config(**fields)), tmp_path / "resumed")
    trainer.train(options_from_config(sr_config(**fields, **{"training.n_iters": 4})), tmp_path / "resumed")
    a, b = (ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / w / "checkpoints", 4)) for w in ("straight", "resumed"))
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    # and the augmentation changes training: without it the weights differ
    trainer.train(options_from_config(sr_config(**{**fields, "training.cond_noise_max": 0.0,
                                                   "sampling.cond_noise": 0.0, "training.n_iters": 4})),
                  tmp_path / "plain")
    c = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "plain" / "checkpoints", 4))
    assert any(not torch.equal(value, c["model"][name]) for name, value in a["model"].items())


@pytest.mark.parametrize("overrides, match", [
    ({"data.low_res": 0}, r"model.cond_channels=1 and data.low_res=0 go together"),
    ({"model.cond_channels": 0, "training.label_dropout": 0.0}, r"model.cond_channels=0 and data.low_res=4 go together"),
    ({"model.cond_channels": 3}, r"config.model.cond_channels must be 1, the channels of data.dataset='digits'"),
    ({"data.low_res": 3}, r"config.data.low_res must be smaller than the model's resolution 8 and divide it"),
    ({"data.low_res": 8}, r"config.data.low_res must be smaller than the model's resolution 8"),
    ({"sampling.cond_noise": 0.9}, r"config.sampling.cond_noise=0.9 must lie in \[0, training.cond_noise_max=0.5\]"),
    ({"sampling.cascade": "only_one"}, r"config.sampling.cascade must be 'BASE_WORKDIR,SR_WORKDIR'"),
    ({"sampling.low_res_from": "train"}, r"config.sampling.low_res_from"),
    ({"sampling.cascade": "a,b", "sampling.low_res_from": "heldout"}, r"sampling.cascade and sampling.low_res_from"),
    ({"sampling.guidance": "classifier", "sampling.classifier_workdir": "x"},
     r"guidance='classifier' applies to class labels"),
    ({"model.num_classes": 10}, r"cond_channels=1 .* and num_classes=10 .* cannot both be set"),
    ({"data.resolution": 3}, r"config.data.resolution must divide the image size 8"),
])
def test_bad_super_resolution_configs_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        options_from_config(sr_config(**overrides))


@pytest.mark.parametrize("overrides, match", [
    ({"training.cond_noise_max": 0.3}, r"config.training.cond_noise_max=0.3 applies to an image-conditioned model"),
    ({"sampling.cascade": "a,b"}, r"config.sampling.cascade='a,b' applies to an image-conditioned model"),
    ({"sampling.low_res_from": "heldout"}, r"config.sampling.low_res_from='heldout' applies to an image-conditioned"),
    ({"eval.sample_quality": True}, r"eval.sample_quality False with data.resolution"),
])
def test_conditioning_fields_on_an_unconditional_model_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        options_from_config(base_config(**overrides))


def test_bad_cascade_pairings_are_one_line_errors(trained, tmp_path):
    run(base_config(**{"data.resolution": 2}), tmp_path / "base2", "train")
    cases = [(f"{tmp_path / 'base2'},{trained / 'sr'}", r"makes 2x2 images, but the super-resolution model's "
                                                         r"data.low_res is 4"),
             (f"{trained / 'sr'},{trained / 'sr'}", r"is itself image-conditioned"),
             (f"{tmp_path / 'none'},{trained / 'sr'}", r"config.sampling.cascade: no checkpoint of the base model")]
    for cascade, match in cases:
        with pytest.raises((ValueError, FileNotFoundError), match=match) as err:
            run(sr_config(**{"sampling.cascade": cascade}), trained / "sr", "sample", outdir=tmp_path / "out")
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"image-conditioned .* set config.sampling.cascade"):
        run(sr_config(), trained / "sr", "sample", outdir=tmp_path / "out")


def test_cfg_needs_condition_dropout(tmp_path):
    """Refused from the config, and from the checkpoint when the config claims a dropout it was not trained with."""
    cfg = {"sampling.guidance": "cfg", "sampling.low_res_from": "heldout", "sampling.guidance_scale": 2.0}
    with pytest.raises(ValueError, match="guidance='cfg' needs a model trained with label dropout"):
        options_from_config(sr_config(**{"training.label_dropout": 0.0, **cfg}))
    run(sr_config(**{"training.label_dropout": 0.0}), tmp_path, "train")
    with pytest.raises(ValueError, match="image-conditioned model was trained without condition dropout"):
        run(sr_config(**cfg), tmp_path, "sample")


def test_training_snapshots_super_resolve_heldout_views(tmp_path):
    """Snapshots and the held-out loss of an SR model condition on the held-out items' low-res views."""
    run(sr_config(**{"training.snapshot_sampling": True, "training.snapshot_freq": 2}), tmp_path, "train")
    snapshot = np.load(tmp_path / "snapshots" / "samples_00000002.npz")["samples"]
    assert snapshot.shape == (4, 1, 8, 8) and np.isfinite(snapshot).all()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_loss" in r and np.isfinite(r["eval_loss"]) for r in records)
