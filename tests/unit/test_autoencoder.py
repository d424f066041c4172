"""First stages: the KL autoencoder's shapes, loss terms and strict save/load; the diffusers adapter."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.data import tiny_diffusers_vae
from scoresde.models.autoencoder import (DiffusersAutoencoder, KLAutoencoder, gaussian_kl_standard,
                                         isotropic_log_prob, load_autoencoder, measure_scale_factor,
                                         sample_posterior, save_autoencoder)


def small_ae(**kw):
    torch.manual_seed(0)
    args = dict(in_channels=1, latent_channels=2, channels=8, n_down=1)
    args.update(kw)
    return KLAutoencoder(**args)


def test_shapes_and_per_sample_loss_terms():
    ae = small_ae()
    x = torch.randn(3, 1, 8, 8)
    mean, logvar = ae.encode(x)
    assert mean.shape == logvar.shape == (3, 2, 4, 4) == (3,) + ae.latent_shape((1, 8, 8))
    assert ae.decode(mean).shape == x.shape
    terms = ae.loss(x, beta=0.5, generator=torch.Generator().manual_seed(1))
    assert terms.loss.shape == terms.recon.shape == terms.kl.shape == (3,)
    # the loss is exactly -recon + beta * kl (catches a dropped beta or a batch-mean inside)
    torch.testing.assert_close(terms.loss, -terms.recon + 0.5 * terms.kl)
    # KL term is the closed form (zero at the standard normal, positive elsewhere)
    assert gaussian_kl_standard(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0
    assert (terms.kl > 0).all()


def test_decoder_density_is_a_normalised_gaussian():
    # log N(x; m, s^2 I) in 1-D against torch.distributions (catches a missing log s or 2 pi term)
    x, m, log_s = torch.randn(5, 1), torch.randn(5, 1), torch.tensor(-0.7)
    ref = torch.distributions.Normal(m, log_s.exp()).log_prob(x)[:, 0]
    torch.testing.assert_close(isotropic_log_prob(x, m, log_s), ref)


def test_image_shape_the_downsampling_does_not_divide_is_a_value_error():
    with pytest.raises(ValueError, match="multiples of the first stage's downsampling 4"):
        small_ae(n_down=2).encode(torch.randn(1, 1, 6, 6))


def test_save_load_is_strict_and_keeps_scale_factor_and_metadata(tmp_path):
    ae = small_ae(learn_decoder_std=False, decoder_std=0.3)
    ae.scale_factor.fill_(2.5)
    save_autoencoder(tmp_path / "ae.pt", ae, dataset="digits")
    back, meta = load_autoencoder(tmp_path / "ae.pt")
    assert meta == {"dataset": "digits"} and float(back.scale_factor) == 2.5
    assert math.isclose(float(back.log_decoder_std.exp()), 0.3, rel_tol=1e-6)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back.decode(back.encode(x)[0]), ae.decode(ae.encode(x)[0]))
    payload = torch.load(tmp_path / "ae.pt", weights_only=True)
    payload["state_dict"]["extra"] = torch.zeros(1)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_autoencoder(tmp_path / "bad.pt")


def test_measured_scale_factor_is_one_over_latent_std():
    ae = small_ae()
    batches = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    g = torch.Generator().manual_seed(3)
    scale = measure_scale_factor(ae, batches, generator=g)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = torch.cat([sample_posterior(*ae.encode(x), generator=g) for x in batches])
    assert math.isclose(scale, 1.0 / z.double().std().item(), rel_tol=1e-6)


def test_tiny_diffusers_autoencoder_round_trips_through_the_adapter(tmp_path):
    pytest.importorskip("diffusers")
    vae = tiny_diffusers_vae(scaling_factor=0.7)
    vae.save_pretrained(tmp_path / "vae")
    ae = DiffusersAutoencoder.from_pretrained(tmp_path / "vae", decoder_std=0.2)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        mean, logvar = ae.encode(x)
        dist = vae.encode(x).latent_dist
        torch.testing.assert_close(mean, dist.mean)
        torch.testing.assert_close(logvar, dist.logvar)
        assert mean.shape == (2,) + ae.latent_shape((1, 8, 8)) == (2, 2, 4, 4)
        torch.testing.assert_close(ae.decode(mean), vae.decode(mean).sample)
        ref = torch.distributions.Normal(vae.decode(mean).sample, 0.2).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(ae.decoder_log_prob(x, mean), ref)
    assert math.isclose(float(ae.scale_factor), 0.7, rel_tol=1e-6)
    with pytest.raises(ValueError, match="config.json"):
        DiffusersAutoencoder.from_pretrained(tmp_path)


def test_forward_is_the_loss_at_the_given_noise():
    # z = mean + exp(logvar / 2) noise; the same noise drawn from a generator gives the same terms
    # (catches a forward that ignores the noise or uses the variance instead of the std)
    ae = small_ae()
    x = torch.randn(3, 1, 8, 8)
    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    terms = ae(x, 0.5, noise)
    mean, logvar = ae.encode(x)
    torch.testing.assert_close(terms.recon, ae.decoder_log_prob(x, mean + torch.exp(0.5 * logvar) * noise))
    same = ae.loss(x, beta=0.5, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(terms.loss, same.loss)
