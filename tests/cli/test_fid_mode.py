"""``--mode fid`` through ``main.run``: the reference statistics cached in pytorch-fid's format and
reused, several seeds, strict loading of a given statistics file, the Inception path on an image
folder, and the refusal of toy data. (The metrics themselves are proven in ``test_sample_quality.py``.)"""
import json
import shutil

import numpy as np
import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.cli.factory import options_from_config
from scoresde.cli.modes import fid as fid_mode
from scoresde.data.pipeline import load_data
from scoresde.evaluate.features import items_at_centres
from scoresde.evaluate.metrics import digits_classifier, feature_statistics, frechet_distance, load_statistics

FID = {"sampling.method": "fast", "sampling.steps": 3, "sampling.batch_size": 32, "eval.fid_samples": 64}


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fid") / "run"
    main.run(tiny_config("digits/ddpmpp_vp", **FID), workdir, "train")
    return workdir


@pytest.fixture
def workdir(trained_digits, tmp_path):
    """A fresh copy of the trained run (no reference cached yet)."""
    return shutil.copytree(trained_digits, tmp_path / "run")


def count_reference_features(monkeypatch) -> list:
    calls = []
    real = fid_mode.features_of

    def counted(levels, *args, **kwargs):
        calls.append(len(levels))
        return real(levels, *args, **kwargs)

    monkeypatch.setattr(fid_mode, "features_of", counted)
    return calls


def test_reference_is_cached_in_pytorch_fid_format_and_reused(workdir, monkeypatch):
    config = tiny_config("digits/ddpmpp_vp", **FID, **{"eval.fid_seeds": 2})
    calls = count_reference_features(monkeypatch)
    first = main.run(config, workdir, "fid")
    path = workdir / "fid_reference_digits_digits-classifier.npz"
    assert first["reference"] == str(path) and first["reference_items"] == 64 and sum(calls) == 64
    with np.load(path) as data:
        assert sorted(data.files) == ["mu", "sigma"]
        assert data["mu"].dtype == np.float64 and data["mu"].shape == (64,) and data["sigma"].shape == (64, 64)
    # the statistics are those of the training items at their cell centres (not the held-out items, not
    # dequantised): the Fréchet distance of those features to the cached file is rounding (~1e-12; a
    # different item set or reading scores > 1e-2)
    spec = load_data(options_from_config(config).data, config.seed)
    real = digits_classifier().features(items_at_centres(spec.train, spec))
    mu, sigma = load_statistics(path)
    expected_mu, expected_sigma = feature_statistics(real)
    assert torch.allclose(mu, expected_mu, atol=1e-10) and torch.allclose(sigma, expected_sigma, atol=1e-10)
    assert abs(frechet_distance(*feature_statistics(real), mu, sigma)) < 1e-6
    # second run: nothing recomputed, the file untouched, the same numbers
    stamp = path.stat().st_mtime_ns
    calls.clear()
    second = main.run(config, workdir, "fid")
    assert calls == [] and path.stat().st_mtime_ns == stamp
    assert second["per_seed"] == [{**r, "time_s": s["time_s"]} for r, s in zip(first["per_seed"], second["per_seed"])]
    # two seeds: each reported, different, min <= mean
    fids = [r["fid"] for r in first["per_seed"]]
    assert [r["seed"] for r in first["per_seed"]] == [config.seed, config.seed + 1] and fids[0] != fids[1]
    assert first["fid_min"] == min(fids) <= first["fid_mean"] == pytest.approx(sum(fids) / 2)
    written = json.loads((workdir / "fid" / "fid.json").read_text())
    assert written["num_samples"] == 64 and written["sampler"] == "fast" and written["sampler_steps"] == 3
    assert written["nfe"] == 4 and written["features"] == "digits-classifier"
    for key in ("kid", "kid_std", "precision", "recall"):
        assert all(np.isfinite(r[key]) for r in written["per_seed"]), key


def test_printed_as_one_line(workdir, capsys):
    main.run(tiny_config("digits/ddpmpp_vp", **FID), workdir, "fid", outdir=workdir / "elsewhere")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FID ")]
    assert len(lines) == 1 and "64 samples per seed" in lines[0] and "digits-classifier" in lines[0]
    assert (workdir / "elsewhere" / "fid.json").is_file()


@pytest.mark.parametrize("arrays, detail", [
    ({"mean": np.zeros(64), "cov": np.eye(64)}, "got cov (64, 64), mean (64,)"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048)}, "got mu (2048,), sigma (2048, 2048)"),
    (None, "not an .npz file"),
])
def test_a_given_reference_is_loaded_strictly(workdir, tmp_path, arrays, detail):
    path = tmp_path / "published.npz"
    if arrays is None:
        path.write_text("not a zip")
    else:
        np.savez(path, **arrays)
    config = tiny_config("digits/ddpmpp_vp", **FID, **{"eval.fid_reference": str(path)})
    with pytest.raises(ValueError) as err:
        main.run(config, workdir, "fid")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and detail in message
    assert "mu (64,) and sigma (64, 64) of digits-classifier features" in message


def test_a_given_reference_that_fits_is_used(workdir, tmp_path):
    path = tmp_path / "given.npz"
    np.savez(path, mu=np.zeros(64), sigma=np.eye(64))
    result = main.run(tiny_config("digits/ddpmpp_vp", **FID, **{"eval.fid_reference": str(path)}), workdir, "fid")
    assert result["reference"] == str(path) and result["reference_items"] is None


def test_fid_needs_image_data(tmp_path):
    with pytest.raises(ValueError, match="applies to image data sets.*'gmm'"):
        main.run(tiny_config("toy/gmm_vp"), tmp_path, "fid")


@pytest.mark.parametrize("field, value, allowed", [("eval.fid_samples", 2, ">= 4"), ("eval.fid_seeds", 0, ">= 1"),
                                                   ("eval.fid_reference_items", -1, ">= 0")])
def test_fid_fields_are_checked(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field}.*{allowed}, got {value}"):
        options_from_config(tiny_config("digits/ddpmpp_vp", **{field: value}))


def test_other_images_use_the_inception_weights_file(tmp_path):
    """An RGB image folder: Inception features from the weights file (here random weights in pytorch-fid's
    layout, ``test_inception.py``), 2048-d statistics; without the file a one-line error naming it."""
    from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
    from scoresde.evaluate.inception import FIDInception
    from test_folder_data import write_folder
    torch.manual_seed(0)
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(dict(FIDInception().state_dict()), weights)
    config = digits_config()
    config.device = "cpu"
    d = config.data
    d.dataset, d.root, d.image_size, d.channels, d.heldout_fraction = "folder", str(write_folder(tmp_path / "images", 10)), 8, 3, 0.2
    t = config.training
    t.batch_size, t.n_iters, t.checkpoint_freq, t.snapshot_sampling, t.progress_bar, t.tensorboard = 8, 2, 2, False, False, False
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_scales = 8, (1,), 1, (), 50
    e = config.eval
    e.fid_samples, e.fid_reference_items, e.inception_weights = 4, 4, str(tmp_path / "missing.pth")
    config.sampling.method, config.sampling.steps, config.sampling.batch_size = "fast", 2, 8
    main.run(config, tmp_path / "run", "train")
    with pytest.raises(FileNotFoundError, match="missing.pth") as err:
        main.run(config, tmp_path / "run", "fid")
    assert "\n" not in str(err.value)
    e.inception_weights = str(weights)
    result = main.run(config, tmp_path / "run", "fid")
    assert result["features"] == "inception-2048" and result["reference_items"] == 4
    with np.load(tmp_path / "run" / "fid_reference_folder_inception-2048_first4.npz") as data:
        assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048)
    assert np.isfinite(result["fid_min"]) and result["fid_min"] > 0


def test_command_line_fid_prints_one_line_and_a_bad_reference_one_error(workdir, tmp_path):
    from helpers.cli import run_cli
    from helpers.tiny import tiny_flags
    flags = tiny_flags("digits/ddpmpp_vp", **FID)
    result = run_cli(*flags, workdir=workdir, mode="fid")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("FID ")][0].endswith("(64 items)")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(3))
    result = run_cli(*flags, f"--config.eval.fid_reference={bad}", workdir=workdir, mode="fid")
    errors = [line for line in result.stderr.splitlines() if line.startswith("main.py: error:")]
    assert result.returncode == 1 and len(errors) == 1 and "bad.npz: expected a pytorch-fid statistics" in errors[0]
