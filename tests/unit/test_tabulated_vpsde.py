"""Checks of ``sde_lib.TabulatedVPSDE`` (a VP process from any DDPM beta table) and of the few-step
samplers' explicit ``times`` grid. No diffusers needed (tests/unit/test_diffusers_interop.py compares with it)."""
import math

import pytest
import torch

from scoresde import sde_lib
from scoresde.samplers import fast_sample, get_time_steps, log_likelihood
from scoresde.utils import batch_sum

# DDPM's linear table and Improved DDPM's cosine table (betas from 4e-5 up to the 0.999 cap) on 100 levels
TABLES = {"linear": lambda: sde_lib.VPSDE().discrete_betas,
          "cosine": lambda: sde_lib.CosineVPSDE(N=100).discrete_betas}


def test_ddpm_tables_are_the_given_betas():
    vp = sde_lib.VPSDE()
    sde = sde_lib.TabulatedVPSDE(vp.discrete_betas)
    assert sde.N == 1000 and sde.T == 1.0
    assert torch.equal(sde.discrete_betas, vp.discrete_betas) and torch.equal(sde.alphas_cumprod, vp.alphas_cumprod)
    # the float64 chain is that of the float32 betas themselves
    assert torch.equal(sde.ddpm_64.betas, vp.discrete_betas.double())


@pytest.mark.parametrize("table", TABLES)
def test_continuous_process_passes_through_every_level(table):
    sde = sde_lib.TabulatedVPSDE(TABLES[table]())
    levels = torch.arange(sde.N, dtype=torch.float64) / (sde.N - 1)
    alpha, sigma = sde.marginal_coeffs(levels)
    assert torch.allclose(alpha, sde.discrete_alphas_marginal, rtol=1e-13, atol=0)  # log then exp: a few ulps of L ~ 10
    assert torch.allclose(sigma, sde.discrete_sigmas_marginal, rtol=1e-13, atol=0)  # log then exp: a few ulps of L ~ 10
    assert torch.equal(sde.timestep_index(levels.float()), torch.arange(sde.N))


@pytest.mark.parametrize("table", TABLES)
def test_beta_is_positive_continuous_and_the_derivative_of_the_marginal(table):
    sde = sde_lib.TabulatedVPSDE(TABLES[table]())
    t = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    beta = sde.beta(t)
    assert bool((beta > 0).all())
    knots = torch.arange(1, sde.N - 1, dtype=torch.float64) / (sde.N - 1)
    assert torch.allclose(sde.beta(knots - 1e-12), sde.beta(knots + 1e-12), rtol=1e-6)  # C1 interpolation
    # beta = -d log alpha_bar / dt = -2 d log alpha / dt (central differences)
    h = 1e-7
    mid = t[1:-1]
    numeric = -(sde.log_mean_coeff(mid + h) - sde.log_mean_coeff(mid - h)) / h
    assert torch.allclose(numeric, sde.beta(mid), rtol=1e-5)


@pytest.mark.parametrize("table", TABLES)
def test_inverse_log_snr_inverts_log_snr_also_beyond_the_table(table):
    sde = sde_lib.TabulatedVPSDE(TABLES[table]())
    zero = torch.zeros(1, dtype=torch.float64)
    # below 0, L = -log alpha_bar continues linearly down to 0 (alpha_bar = 1) at -L(0) / beta(0)
    below = float(0.5 * 2.0 * sde.log_mean_coeff(zero) / sde.beta(zero))
    t = torch.cat([torch.rand(500, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
                   torch.tensor([0.0, 1.0, below, 1.05], dtype=torch.float64)])
    assert torch.allclose(sde.inverse_log_snr(sde.log_snr(t)), t, rtol=0, atol=1e-12)


@pytest.mark.parametrize("table", TABLES)
def test_exact_likelihood_of_gaussian_data(table):
    """Data N(0, s^2 I) stay Gaussian, N(0, v_t I) with v_t = alpha_t^2 s^2 + sigma_t^2, and their score is
    -x / v_t: the probability-flow ODE of the SDE's beta(t) must carry log N(x; 0, v_eps) to log N(z; 0, v_T),
    which holds only if beta(t) and the marginals (alpha_t, sigma_t) are one consistent process."""
    sde = sde_lib.TabulatedVPSDE(TABLES[table]())
    s2, eps = 0.25, 1e-3

    def variance(t):
        alpha, sigma = sde.marginal_coeffs(t)
        return alpha ** 2 * s2 + sigma ** 2

    def gaussian_logp(x, v):
        return -0.5 * batch_sum(x ** 2) / v - 0.5 * x[0].numel() * torch.log(2 * math.pi * v)

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * math.sqrt(s2)
    v_T = variance(torch.tensor([sde.T], dtype=torch.float64))
    logp, _, _ = log_likelihood(sde, lambda x, t: -x / variance(t)[:, None], x, rtol=1e-6, atol=1e-6, eps=eps,
                                prior_logp=lambda z: gaussian_logp(z, v_T))
    expected = gaussian_logp(x, variance(torch.full((4,), eps, dtype=torch.float64)))
    assert torch.allclose(logp, expected, rtol=0, atol=1e-4)  # dopri5 at 1e-6: errors ~1e-5


@pytest.mark.parametrize("betas,match", [([0.1], "at least 2"), ([[0.1, 0.2]], "at least 2"),
                                         ([0.1, 1.0], r"\(0, 1\)"), ([0.0, 0.1], r"\(0, 1\)"),
                                         ([0.1, float("nan")], r"\(0, 1\)"), ("abc", "betas")])
def test_bad_betas_are_value_errors(betas, match):
    with pytest.raises(ValueError, match=match):
        sde_lib.TabulatedVPSDE(betas)


# ----- the few-step samplers' explicit grid ---------------------------------------------------------------
def test_explicit_times_reproduce_the_default_grid_and_are_checked():
    sde = sde_lib.VPSDE()
    score = lambda x, t: -x  # noqa: E731  (the score of N(0, I) data)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    default, nfe = fast_sample(sde, score, z.shape, steps=6, z=z)
    explicit, nfe_explicit = fast_sample(sde, score, z.shape, z=z, times=get_time_steps(sde, 6, 1e-3))
    assert torch.equal(default, explicit) and nfe == nfe_explicit == 7
    for bad, match in [([0.5], "at least 2"), ([0.2, 0.5], "decreasing"), ([1.5, 0.5], r"\[0, T\]"),
                       ([0.5, 0.0], "log-SNR")]:  # VP's log-SNR is infinite at t = 0
        with pytest.raises(ValueError, match=match):
            fast_sample(sde, score, z.shape, z=z, times=bad)
