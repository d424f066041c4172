"""--mode train_autoencoder: a latent diffusion first stage trained by the training loop (checkpoints,
exact resume after a stop signal, metrics, loss curve, reconstruction snapshots), exported as
<workdir>/autoencoder.pt that data.first_stage=<workdir> takes directly; bad input fails first."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.data.datasets import dequantize, get_image_dataset
from scoresde.data.streams import Stream, generator
from scoresde.models.autoencoder import load_autoencoder, measure_scale_factor
from scoresde.run import checkpoint as ckpt
from scoresde.train import autoencoder as ae_mode


def ae_config(**overrides):
    sizes = dict(autoencoder__channels=8, training__snapshot_sampling=True, training__snapshot_freq=4,
                 training__snapshot_num_samples=8)
    return tiny_config("digits/autoencoder", **{**sizes, **overrides})


def test_trains_writes_what_training_writes_and_a_first_stage_file(tmp_path):
    result = main.run(ae_config(), tmp_path, "train_autoencoder")
    assert result["step"] == 4 and result["first_stage"] == str(tmp_path / "autoencoder.pt")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    evals = [r for r in records if "vae_bpd" in r]
    # the VAE's bound is in bits/dim of 17-level digits: finite and above 0 (a density bound can be
    # below log2(17) = 4.09 only once trained; after 4 steps it is far above it)
    assert [r["step"] for r in evals] == [2, 4] and all(np.isfinite(r["vae_bpd"]) for r in evals)
    assert (tmp_path / "loss_curve.png").is_file()
    assert (tmp_path / "snapshots" / "reconstructions_00000004.png").is_file()
    pictures = np.load(tmp_path / "snapshots" / "reconstructions_00000004.npz")["samples"]
    assert pictures.shape == (16, 1, 8, 8)          # 8 held-out digits, then their 8 reconstructions

    # a second run of the finished work directory keeps the file, byte for byte (its latent caches stay valid)
    before = (tmp_path / "autoencoder.pt").read_bytes()
    assert main.run(ae_config(), tmp_path, "train_autoencoder")["already_finished"]
    assert (tmp_path / "autoencoder.pt").read_bytes() == before
    ae, meta = load_autoencoder(tmp_path / "autoencoder.pt")
    assert meta == {"dataset": "digits", "shape": [1, 8, 8], "centered": True, "num_levels": 17, "step": 4}
    state, _ = ckpt.load_latest(tmp_path / "checkpoints")
    for name, value in ae.state_dict().items():     # the EMA weights of the last checkpoint
        if name != "scale_factor":
            assert torch.equal(value, state["ema"]["shadow"][name]), name
    # the scale factor is 1 / std of posterior draws over the 64 training digits (cell centres), the
    # same seeded draws: exact (catches an unmeasured factor of 1, the held-out split, uniform noise)
    images = get_image_dataset("digits", None, split="train").images[:64]
    x = 2 * dequantize(images.long(), 17, uniform=False) - 1
    ae.scale_factor.fill_(1.0)
    expected = measure_scale_factor(ae.eval(), [x], generator=generator(42, Stream.SCALE_FACTOR))
    assert float(load_autoencoder(tmp_path / "autoencoder.pt")[0].scale_factor) == pytest.approx(expected, rel=1e-6)


def test_resume_after_sigterm_is_bit_identical_and_exports_the_same_file(tmp_path, monkeypatch):
    config = ae_config(training__n_iters=6, training__checkpoint_freq=4, training__snapshot_freq=1000)
    main.run(config, tmp_path / "straight", "train_autoencoder")
    original = ae_mode.finish_update

    def update_then_signal(run, loss):
        original(run, loss)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ae_mode, "finish_update", update_then_signal)
    stopped = main.run(config, tmp_path / "split", "train_autoencoder")
    assert stopped["stopped_by_signal"] and stopped["step"] == 3
    monkeypatch.undo()
    assert main.run(config, tmp_path / "split", "train_autoencoder")["step"] == 6
    a, _ = ckpt.load_latest(tmp_path / "straight" / "checkpoints")
    b, _ = ckpt.load_latest(tmp_path / "split" / "checkpoints")
    assert a["step"] == b["step"] == 6 and a["loader"] == b["loader"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    first, second = (load_autoencoder(tmp_path / d / "autoencoder.pt")[0] for d in ("straight", "split"))
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_the_file_works_as_data_first_stage(tmp_path):
    main.run(ae_config(training__snapshot_sampling=False), tmp_path / "ae", "train_autoencoder")
    config = tiny_config("digits/ddpmpp_vp", data__first_stage=str(tmp_path / "ae"),
                         data__uniform_dequantization=False, sampling__method="fast", sampling__steps=3)
    main.run(config, tmp_path / "ldm", "train")
    state, _ = ckpt.load_latest(tmp_path / "ldm" / "checkpoints")
    assert state["meta"]["latent_shape"] == [2, 4, 4]            # digits/autoencoder: 2 channels, f = 2
    main.run(config, tmp_path / "ldm", "sample")
    samples = np.load(tmp_path / "ldm" / "samples" / "samples.npz")["samples"]
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("overrides, message", [
    ({"autoencoder__downsampling": 3}, r"autoencoder.downsampling must be a power of 2 \(1, 2, 4, 8, ...\), got 3"),
    ({"autoencoder__downsampling": 16}, r"autoencoder.downsampling=16 must divide the image size 8x8 of "
                                        r"data.dataset='digits'"),
    ({"autoencoder__beta": -1.0}, r"config.autoencoder.beta"),
    ({"autoencoder__latent_channels": 0}, r"config.autoencoder.latent_channels"),
])
def test_bad_input_is_a_value_error_before_any_file(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        main.run(ae_config(**overrides), tmp_path / "run", "train_autoencoder")
    assert not (tmp_path / "run").exists()


def test_a_first_stage_in_the_config_is_a_value_error(tmp_path):
    main.run(ae_config(training__snapshot_sampling=False), tmp_path / "ae", "train_autoencoder")
    config = ae_config(data__first_stage=str(tmp_path / "ae"), data__uniform_dequantization=False)
    with pytest.raises(ValueError, match=r"data.first_stage='.*ae' must be '' for --mode train_autoencoder"):
        main.run(config, tmp_path / "run", "train_autoencoder")
    assert not (tmp_path / "run").exists()


def test_vector_data_and_outdir_are_value_errors(tmp_path):
    config = tiny_config("toy/gmm_vp")
    with pytest.raises(ValueError, match=r"train_autoencoder trains a first stage of images; data.dataset='gmm'"):
        main.run(config, tmp_path / "run", "train_autoencoder")
    with pytest.raises(ValueError, match="--outdir applies to"):
        main.run(ae_config(), tmp_path / "run", "train_autoencoder", outdir=tmp_path / "out")
    assert not (tmp_path / "run").exists()
