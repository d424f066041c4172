"""The latent diffusion bound on a linear-Gaussian autoencoder of Gaussian data, where every term is
closed form: x ~ N(0, C) in 4-D, q(z|x) = N(A x, diag(v)) in 2-D, p(x|z) = N(B z, s^2 I), and a
diffusion on u = c z whose score is the exact score of the aggregate posterior's law pushed by the VP
SDE, so the ODE's log p_eps(u) is exact (docs/latent_diffusion.md)."""
from __future__ import annotations

import math

import pytest
import torch

from scoresde.likelihood.bits import bits_per_dim
from scoresde.likelihood.latent import latent_bound
from scoresde.sde_lib import VPSDE
from scoresde.sde_lib.mixture import GaussianMixture

F64 = torch.float64
EPS = 1e-5
SCALE = 1.7  # the latent scale factor c != 1, so a missing d_z log c Jacobian shows


class LinearGaussianFirstStage:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(2, 4, generator=g, dtype=F64) * 0.6
        self.logvar = torch.tensor([-2.5, 0.3], dtype=F64)  # q too narrow in one direction, too wide in the other: a visible gap
        self.B = torch.randn(4, 2, generator=g, dtype=F64)  # replaced by the regression of x on z in setting()
        self.log_s = math.log(0.5)
        self.scale_factor = torch.tensor(SCALE, dtype=F64)

    def encode(self, x):
        return x @ self.A.T, self.logvar.expand(x.shape[0], 2)

    def decode(self, z):
        return z @ self.B.T

    def decoder_log_prob(self, x, z):
        return torch.distributions.Normal(self.decode(z), math.exp(self.log_s)).log_prob(x).sum(1)


def setting():
    g = torch.Generator().manual_seed(1)
    L = torch.randn(4, 4, generator=g, dtype=F64) * 0.5
    C = L @ L.T + 0.3 * torch.eye(4, dtype=F64)
    ae = LinearGaussianFirstStage()
    sigma_z = ae.A @ C @ ae.A.T + torch.diag(ae.logvar.exp())      # law of z under the data
    ae.B = C @ ae.A.T @ torch.linalg.inv(sigma_z)                   # E[x | z]: a good decoder, small draw variance
    latent = GaussianMixture([1.0], torch.zeros(1, 2), (SCALE ** 2 * sigma_z)[None])  # law of u = c z
    sde = VPSDE()
    x = torch.randn(3, 4, generator=g, dtype=F64) @ torch.linalg.cholesky(C).T    # x ~ N(0, C), seeded
    return ae, sde, latent, x


def expected_elbo_and_log_px(ae, sde, latent, x):
    alpha, sigma = (v.item() for v in sde.marginal_coeffs(torch.tensor([EPS], dtype=F64)))
    P = (alpha ** 2 * latent.covs[0] + sigma ** 2 * torch.eye(2, dtype=F64)) / SCALE ** 2  # p_theta(z) = N(0, P)
    V = torch.diag(ae.logvar.exp())
    m = x @ ae.A.T
    s2 = math.exp(2 * ae.log_s)
    recon = torch.distributions.MultivariateNormal(m @ ae.B.T, s2 * torch.eye(4, dtype=F64)).log_prob(x) \
        - torch.trace(ae.B @ V @ ae.B.T) / (2 * s2)
    Pinv = torch.linalg.inv(P)
    prior = -0.5 * (((m @ Pinv) * m).sum(1) + torch.trace(Pinv @ V)) - 0.5 * torch.logdet(2 * math.pi * P)
    entropy = 0.5 * (math.log(2 * math.pi) + 1.0 + ae.logvar).sum()
    log_px = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=F64),
                                                    ae.B @ P @ ae.B.T + s2 * torch.eye(4, dtype=F64)).log_prob(x)
    return recon + prior + entropy, log_px


def ode_kwargs(sde, latent):
    # float64 and tight tolerances: the ODE's own error (~1e-6 nats) is far below the Monte Carlo error
    return dict(eps=EPS, rtol=1e-8, atol=1e-8, dtype=F64, prior_logp=lambda u: latent.log_prob_t(sde, u, sde.T))


def test_ode_prior_is_the_exact_latent_density_with_the_scale_jacobian():
    ae, sde, latent, x = setting()
    exact = latent_bound(ae, sde, latent.score_fn(sde), x, 4, prior=lambda u: latent.log_prob_t(sde, u, EPS),
                         generator=torch.Generator().manual_seed(5))
    ode = latent_bound(ae, sde, latent.score_fn(sde), x, 4, generator=torch.Generator().manual_seed(5),
                       ode_kwargs=ode_kwargs(sde, latent))
    # same draws; the ODE with the exact score reproduces log p_eps to its tolerance (catches a wrong
    # time, a wrong prior at T, or a Jacobian added twice)
    torch.testing.assert_close(ode.prior, exact.prior, atol=1e-5, rtol=0)
    torch.testing.assert_close(ode.recon, exact.recon)
    assert ode.nfe > 0 and exact.nfe == 0


@pytest.mark.parametrize("prior", ["ode", "elbo"])
def test_estimate_matches_the_closed_form_expected_elbo_and_stays_below_log_px(prior):
    ae, sde, latent, x = setting()
    expected, log_px = expected_elbo_and_log_px(ae, sde, latent, x)
    kw = ode_kwargs(sde, latent)
    # with the exact score and the exact p_T, the diffusion ELBO is unbiased for log p_eps (zero gap)
    lb = latent_bound(ae, sde, latent.score_fn(sde), x, 256, prior=prior, generator=torch.Generator().manual_seed(7),
                      ode_kwargs=kw if prior == "ode" else None,
                      elbo_kwargs=dict(n_samples=64, eps=EPS, prior_logp=kw["prior_logp"]) if prior == "elbo" else None)
    # 4 standard errors: a false failure over 3 images has probability ~2e-4 (catches a missing Jacobian,
    # a wrong entropy sign, a latent-dimension bits/dim, anything moving the mean by > 4 stderr ~ 0.1 nats)
    assert ((lb.bound - expected).abs() <= 4 * lb.stderr).all(), (lb.bound, expected, lb.stderr)
    assert (lb.stderr < 0.2).all()
    # the ELBO's gap KL(q(z|x) || p(z|x)) is positive in closed form (0.5 to 3.7 nats here) and larger than
    # the error bars, so the estimate sits below the exact log p(x) of the model
    assert (expected < log_px - 5 * lb.stderr).all()
    assert (lb.bound < log_px).all()


def test_bits_per_dim_are_per_pixel_not_per_latent_dimension():
    ae, sde, latent, x = setting()
    lb = latent_bound(ae, sde, latent.score_fn(sde), x, 2, prior=lambda u: latent.log_prob_t(sde, u, EPS))
    bpd, err = lb.bits_per_dim(num_levels=256, centered=True)
    torch.testing.assert_close(bpd, bits_per_dim(lb.bound, 4, num_levels=256, centered=True))
    torch.testing.assert_close(err, lb.stderr / (4 * math.log(2)))


def test_bad_prior_and_draw_count_are_value_errors():
    ae, sde, latent, x = setting()
    with pytest.raises(ValueError, match=r"prior must be one of \['ode', 'elbo'\]"):
        latent_bound(ae, sde, latent.score_fn(sde), x, 4, prior="exact")
    with pytest.raises(ValueError, match="n_latents must be an integer >= 2"):
        latent_bound(ae, sde, latent.score_fn(sde), x, 1)
