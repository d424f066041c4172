"""Latent diffusion through the command line: data.first_stage encodes digits once (cached beside the
autoencoder), train learns the latents, sample decodes them; bad pairings fail in one line first."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers.data import tiny_diffusers_vae
from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.cli.factory import options_from_config
from scoresde.data.datasets import dequantize, get_image_dataset
from scoresde.data.latents import write_first_stage_json
from scoresde.data.streams import Stream, generator
from scoresde.likelihood.latent import latent_bound
from scoresde.models.autoencoder import KLAutoencoder, load_autoencoder, save_autoencoder
from scoresde.run.checkpoint import list_checkpoints
from scoresde.run.distributed import DistContext
from scoresde.run.inference import load_for_inference

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
    with pytest.raises(ValueError, match="--mode fid does not take data.first_stage"):
        main.run(latent_config(first_stage(tmp_path)), tmp_path / "run", "fid")
    with pytest.raises(ValueError, match=r"eval.bounds='elbo' applies to pixel-space models; with data.first_stage"):
        main.run(latent_config(tmp_path / "ae", eval__bounds="elbo"), tmp_path / "run", "eval")


EVAL = dict(eval__bound_items=4, eval__latent_draws=3)


def test_eval_reports_the_latent_bound_in_bits_per_dim_of_the_pixels(tmp_path):
    folder = first_stage(tmp_path)
    config = latent_config(folder, **EVAL)
    main.run(config, tmp_path / "run", "train")
    metrics = main.run(config, tmp_path / "run", "eval")
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["latent_bpd"] == metrics["latent_bpd"]
    assert "bpd" not in metrics and metrics["latent_items"] == 4 and metrics["latent_draws"] == 3
    assert metrics["uniform_bpd"] == pytest.approx(math.log2(17))

    # the same number from the library, with the eval's streams: the first 4 held-out digits uniformly
    # dequantised (BOUND_DATA), 3 latent draws each (LATENT_BOUND), the ODE's probes (LIKELIHOOD); bits/dim
    # over the D = 64 pixels (not the 32 latent numbers), centred data's log-determinant 64 log 2
    options = options_from_config(config)
    inf = load_for_inference(options, tmp_path / "run", DistContext())
    items = get_image_dataset("digits", None, split="test").images[:4]
    u = dequantize(items.long(), 17, generator=generator(42, Stream.BOUND_DATA), uniform=True)
    ae, _ = load_autoencoder(folder / "autoencoder.pt")
    out = latent_bound(ae.eval(), inf.sde, inf.score_fn, 2 * u - 1, 3, prior="ode",
                       generator=generator(42, Stream.LATENT_BOUND),
                       ode_kwargs={**options.eval.likelihood_kwargs, "generator": generator(42, Stream.LIKELIHOOD)})
    per_item = -(out.bound.double() + 64 * math.log(2.0) - 64 * math.log(17)) / (64 * math.log(2.0))
    # float32 ODE on identical inputs and draws: equal to rounding (catches the latent dimension, a missing
    # log-determinant or level term, other items, other draws)
    assert metrics["latent_bpd"] == pytest.approx(float(per_item.mean()), rel=1e-5)
    assert metrics["latent_bpd_stderr"] == pytest.approx(float(per_item.std() / 2), rel=1e-4)
    terms = metrics["latent_recon_nats"] + metrics["latent_prior_nats"] + metrics["latent_entropy_nats"]
    assert terms == pytest.approx(float(out.bound.double().mean()), rel=1e-5, abs=1e-4)
    assert metrics["latent_scale_factor"] == 2.0


def test_eval_of_a_latent_model_with_the_elbo_prior_and_sample_quality(tmp_path):
    config = latent_config(first_stage(tmp_path), eval__latent_prior="elbo", eval__elbo_samples=4,
                           eval__sample_quality=True, eval__quality_samples=8, **EVAL)
    main.run(config, tmp_path / "run", "train")
    metrics = main.run(config, tmp_path / "run", "eval")
    assert metrics["latent_prior"] == "elbo" and np.isfinite(metrics["latent_bpd"])
    # decoded samples scored against the pixel held-out digits in the digits classifier's features
    assert np.isfinite(metrics["fd"]) and metrics["quality_samples"] == 8 and "classifier_score" in metrics


def test_a_diffusers_autoencoder_folder_works_as_a_first_stage_end_to_end(tmp_path):
    pytest.importorskip("diffusers")
    vae = tiny_diffusers_vae(scaling_factor=0.7)
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"is a diffusers folder without first_stage.json"):
        main.run(latent_config(folder), tmp_path / "run", "train")
    write_first_stage_json(folder, dataset="digits", shape=(1, 8, 8), centered=True, decoder_std=0.2)
    config = latent_config(folder, **EVAL)
    main.run(config, tmp_path / "run", "train")
    # the cached latents are the VAE's own posterior at the cell centres of the training digits
    cached = torch.load(next((folder / "latents").glob("digits_train_*.pt")), weights_only=True)
    images = get_image_dataset("digits", None, split="train").images[:4]
    with torch.no_grad():
        dist = vae.encode(2 * dequantize(images.long(), 17, uniform=False) - 1).latent_dist
    torch.testing.assert_close(cached[:4], torch.cat([dist.mean, dist.logvar], dim=1))
    main.run(config, tmp_path / "run", "sample")
    samples = np.load(tmp_path / "run" / "samples" / "samples.npz")["samples"]
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    metrics = main.run(config, tmp_path / "run", "eval")
    # the bound of p(x|z) = N(decode(z), 0.2^2 I) with the VAE config's scaling factor 0.7
    assert np.isfinite(metrics["latent_bpd"]) and metrics["latent_scale_factor"] == pytest.approx(0.7)
