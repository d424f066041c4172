"""Latent diffusion through the command line: data.first_stage encodes digits once (cached beside the
autoencoder), train learns the latents, sample decodes them; bad pairings fail in one line first."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.models.autoencoder import KLAutoencoder, save_autoencoder
from scoresde.run.checkpoint import list_checkpoints

LATENT = (2, 4, 4)   # digits (1, 8, 8) through a first stage with f = 2 and 2 latent channels


def first_stage(tmp_path, dataset="digits", shape=(1, 8, 8), centered=True):
    torch.manual_seed(0)
    ae = KLAutoencoder(in_channels=1, latent_channels=2, channels=8, n_down=1)
    ae.scale_factor.fill_(2.0)
    folder = tmp_path / "ae"
    folder.mkdir()
    save_autoencoder(folder / "autoencoder.pt", ae, dataset=dataset, shape=list(shape), centered=centered)
    return folder


def latent_config(folder, **overrides):
    return tiny_config("digits/ddpmpp_vp", data__first_stage=str(folder), data__uniform_dequantization=False,
                       sampling__method="fast", sampling__steps=3, **overrides)


def test_train_on_latents_then_sample_decodes_to_images(tmp_path):
    folder = first_stage(tmp_path)
    config = latent_config(folder)
    main.run(config, tmp_path / "run", "train")
    state = torch.load(list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1], weights_only=True)
    # the network was built for and trained on latents, and the checkpoint records the first stage
    assert state["meta"]["latent_shape"] == list(LATENT) and state["meta"]["first_stage"] == str(folder)
    assert len(list((folder / "latents").glob("digits_train_*.pt"))) == 1      # encoded once, cached
    info = main.run(config, tmp_path / "run", "sample")
    samples = np.load(tmp_path / "run" / "samples" / "samples.npz")["samples"]
    # decoded to pixel space: digits' item shape, data-space values
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert info["num_samples"] == 4


def test_first_stage_of_another_dataset_is_a_value_error(tmp_path):
    folder = first_stage(tmp_path, dataset="mnist", shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"first_stage=.* was trained on \{'dataset': 'mnist'"):
        main.run(latent_config(folder), tmp_path / "run", "train")


def test_latents_for_a_vector_network_are_a_value_error(tmp_path):
    config = latent_config(first_stage(tmp_path), model__name="mlp")
    with pytest.raises(ValueError, match=r"model.name='mlp' takes vector data .* latents \(data.first_stage\) "
                                         r"of shape \(2, 4, 4\)"):
        main.run(config, tmp_path / "run", "train")


def test_missing_first_stage_and_unsupported_mode_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="data.first_stage=.*no autoencoder there"):
        main.run(latent_config(tmp_path / "nowhere"), tmp_path / "run", "train")
    with pytest.raises(ValueError, match="--mode eval does not take data.first_stage"):
        main.run(latent_config(first_stage(tmp_path)), tmp_path / "run", "eval")
