"""Likelihood bounds (``scoresde/likelihood``: elbo.py, chain.py) against exact answers.

Error bars: every bound is a Monte-Carlo estimate; a check "within Z standard errors" uses Z = 4
(a two-sided false-alarm rate of 6e-5 per comparison) with the standard error of the quantity
compared: the estimator's own ``std / sqrt(n)`` over its draws, or, for means over data points, the
spread over those points ``/ sqrt(M)``. Closed-form parts (prior KL, Gaussian data) are checked to
1e-10 (float64 round-off). All draws come from seeded generators, so the tests are deterministic.

- Continuous ELBO: with the exact mixture score and the exact ``log p_T`` as prior it is tight in
  expectation (Song, Durkan, Murray & Ermon 2021, Thm. 2 with equality): mean over draws = exact
  ``log p_eps(x)``. With the score shifted by ``c / sigma_t`` its expectation over ``x ~ p_eps`` drops by
  ``½ |c|^2 ∫ g^2 / sigma_t^2 dt = ½ |c|^2 Z`` (Girsanov; the cross term averages to zero over ``x``).
- DDPM VLB: Gaussian data ``N(m, s^2 I)`` with the exact score of every chain level makes every reverse
  step linear, so ``p_theta(x)`` is Gaussian and each VLB term's expectation is a closed form (below,
  written from DDPM's tables, independently of scoresde/likelihood/chain.py).
"""
import math

import pytest
import torch

from gmm_utils import gen, make_test_mixture
from scoresde.samplers import (bits_per_dim, bits_per_dim_bound, ddpm_vlb, discretized_gaussian_log_likelihood, elbo,
                      iw_bound, iw_from_log_weights, iw_log_weights, vlb_terms)
from scoresde.likelihood.chain import default_decoder_std, prior_kl
from scoresde.sde_lib import VESDE, VPSDE, subVPSDE

F64 = torch.float64
Z_MAX = 4.0
MIX = make_test_mixture()
EPS = 1e-5


def make_sde(name):
    # VE with sigma_max = 10 as in test_ode_likelihood.py; the exact log p_T is the prior anyway
    return {"vp": VPSDE, "subvp": subVPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}[name]()


def exact_logp_eps(sde, x):
    return MIX.log_prob_t(sde, x, torch.full((x.shape[0],), EPS, dtype=F64))


# ------------------------------------------------------------------------------- continuous ELBO
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("importance_sampling", [True, False])
def test_elbo_is_tight_in_expectation_with_exact_score_and_prior(sde_name, importance_sampling):
    sde = make_sde(sde_name)
    x = MIX.sample(16, generator=gen(1), dtype=F64)
    bound, stderr, nfe = elbo(sde, MIX.score_fn(sde), x, n_samples=4000, eps=EPS,
                              prior_logp=MIX.prior_logp_fn(sde), generator=gen(2),
                              importance_sampling=importance_sampling, draws_per_call=500)
    assert nfe == 8000
    exact = exact_logp_eps(sde, x)
    # measured per-draw std 3.5-6.5 nats -> stderr 0.06-0.1 per point; 16 points, each within 4 SE,
    # and their mean (an average of 16 independent estimates) within 4 of its own SE
    z = (bound - exact) / stderr
    assert z.abs().max() < Z_MAX, z
    assert abs(float((bound - exact).mean())) < Z_MAX * float(stderr.pow(2).sum().sqrt()) / 16
    assert float(stderr.max()) < 0.3, stderr.max()


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_elbo_with_gaussian_prior_is_a_lower_bound(sde_name):
    # the default N(0, prior_std^2) prior is not p_T, so the bound is looser by about KL(p_T || prior) >= 0
    sde = make_sde(sde_name)
    x = MIX.sample(16, generator=gen(3), dtype=F64)
    bound, stderr, _ = elbo(sde, MIX.score_fn(sde), x, n_samples=2000, eps=EPS, generator=gen(4),
                            draws_per_call=500)
    assert float(((bound - exact_logp_eps(sde, x)) / stderr).max()) < Z_MAX


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_perturbed_score_is_looser_by_the_expected_amount(sde_name):
    sde = make_sde(sde_name)
    M = 512
    x0 = MIX.sample(M, generator=gen(5), dtype=F64)
    alpha, sigma = sde.marginal_coeffs(torch.full((M,), EPS, dtype=F64))
    x = alpha[:, None] * x0 + sigma[:, None] * torch.randn(M, 2, generator=gen(6), dtype=F64)  # x ~ p_eps
    c = torch.tensor([0.2, -0.1], dtype=F64)
    exact_score = MIX.score_fn(sde)

    def perturbed(xt, t):
        return exact_score(xt, t) + c / sde.marginal_coeffs(t)[1][:, None]

    kwargs = dict(n_samples=64, eps=EPS, prior_logp=MIX.prior_logp_fn(sde), draws_per_call=64)
    b_exact, _, _ = elbo(sde, exact_score, x, generator=gen(7), **kwargs)
    b_pert, _, _ = elbo(sde, perturbed, x, generator=gen(7), **kwargs)  # common random numbers
    _, Z = sde.sample_importance_time(1, EPS)
    expected = -0.5 * float(c.pow(2).sum()) * Z          # -0.6 (VP), -0.9 (sub-VP), -0.35 (VE) nats
    d = b_pert - b_exact
    se = float(d.std()) / math.sqrt(M)                   # measured 0.025-0.03
    assert abs(float(d.mean()) - expected) < Z_MAX * se
    assert float(d.mean()) + Z_MAX * se < 0              # strictly looser
    gap = b_pert - exact_logp_eps(sde, x)
    assert abs(float(gap.mean()) - expected) < Z_MAX * float(gap.std()) / math.sqrt(M)


def test_elbo_of_gaussian_data_is_exact_with_its_control_variate():
    # data N(0, v I) with its exact score: the control variate with reference_var = v cancels every
    # draw, leaving the closed form; another reference_var leaves the same mean with nonzero spread
    v, sde = 0.7, VPSDE()
    x = torch.randn(6, 3, generator=gen(8), dtype=F64) * math.sqrt(v)

    def score(xt, t):
        alpha, sigma = sde.marginal_coeffs(t)
        return -xt / (alpha ** 2 * v + sigma ** 2)[:, None]

    def log_p(t, y):
        alpha, sigma = sde.marginal_coeffs(torch.full((y.shape[0],), t, dtype=F64))
        var = alpha ** 2 * v + sigma ** 2
        return -0.5 * (y ** 2).sum(1) / var - 1.5 * torch.log(2 * math.pi * var)

    exact = log_p(EPS, x)
    prior = lambda z: log_p(sde.T, z)  # noqa: E731
    b, se, _ = elbo(sde, score, x, n_samples=16, eps=EPS, prior_logp=prior, reference_var=v, generator=gen(9))
    # the prior term is still averaged over draws of x_T: its spread is the only noise left
    assert float(((b - exact) / se).abs().max()) < Z_MAX
    # default Gaussian prior (closed-form expectation) and reference_var = v: no randomness remains ...
    b3, se3, _ = elbo(sde, score, x, n_samples=16, eps=EPS, reference_var=v, generator=gen(11))
    assert float(se3.max()) < 1e-9
    # ... and plain Monte Carlo without the control variate agrees with that closed form
    b2, se2, _ = elbo(sde, score, x, n_samples=4000, eps=EPS, reference_var=None, generator=gen(10),
                      draws_per_call=1000)
    assert float(((b2 - b3) / se2).abs().max()) < Z_MAX


def test_elbo_checks_arguments_and_counts_score_calls():
    sde, x = VPSDE(), torch.zeros(4, 2)
    with pytest.raises(ValueError, match="eps"):
        elbo(sde, MIX.score_fn(sde), x, eps=0.0)
    with pytest.raises(ValueError, match="n_samples"):
        elbo(sde, MIX.score_fn(sde), x, n_samples=1)
    with pytest.raises(ValueError, match="shaped like x"):
        elbo(sde, lambda y, t: y[:, :1], x)
    with pytest.raises(ValueError, match="elbo: score_fn returned NaN"):
        elbo(sde, lambda y, t: y * math.nan, x)


# ------------------------------------------------------------------- discrete chain: Gaussian data
MEAN, STD = 0.3, 0.5   # data N(MEAN, STD^2) per dimension


def chain_sde():
    return VPSDE(N=50)   # betas linspace(0.002, 0.4, 50): a cheap chain whose bound gap is large


def exact_chain_score(sde):
    """The exact score of level i of the discrete chain, N(a_i MEAN, a_i^2 STD^2 + s_i^2)."""
    def score(x, t):
        a, s = sde.discrete_marginal(sde.timestep_index(t), x)
        return -(x - a[:, None] * MEAN) / (a[:, None] ** 2 * STD ** 2 + s[:, None] ** 2)
    return score


def reverse_coefficients(sde, variance):
    """The model step ``mu(x_i) = A_i x_i + B_i`` with variance ``V_i``, from DDPM's tables (eq. 7, 11)."""
    tab = sde.ddpm_64
    abar = tab.alphas_cumprod
    k = 1 - (1 - abar) / (abar * STD ** 2 + 1 - abar)                       # x0_hat = (k x + b) / sqrt(abar)
    b = (1 - abar) * abar.sqrt() * MEAN / (abar * STD ** 2 + 1 - abar)
    A = tab.posterior_mean_coef2 + tab.posterior_mean_coef1 * k / abar.sqrt()
    B = tab.posterior_mean_coef1 * b / abar.sqrt()
    V = tab.posterior_variance if variance == "posterior" else tab.betas
    return A, B, V


def exact_model_logp(sde, x, variance, dec_var):
    """log p_theta(x): N(0, 1) pushed through the linear Gaussian steps and the decoder."""
    A, B, V = reverse_coefficients(sde, variance)
    mean, var = torch.zeros((), dtype=F64), torch.ones((), dtype=F64)
    for i in range(sde.N - 1, 0, -1):
        mean, var = A[i] * mean + B[i], A[i] ** 2 * var + V[i]
    mean, var = A[0] * mean + B[0], A[0] ** 2 * var + dec_var
    return (-0.5 * (x - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).sum(1)


def closed_form_terms(sde, x, variance, dec_var):
    """L_T and E[L_0], E[L_{i-1}] (expectation over x_i ~ q(x_i | x)) in closed form: (B,), (B, N)."""
    tab = sde.ddpm_64
    A, B, V = reverse_coefficients(sde, variance)
    abar = tab.alphas_cumprod
    out = torch.zeros(x.shape[0], sde.N, dtype=F64)
    d0 = (A[0] * abar[0].sqrt() - 1) * x + B[0]
    out[:, 0] = (0.5 * math.log(2 * math.pi * dec_var) + (d0 ** 2 + A[0] ** 2 * (1 - abar[0])) / (2 * dec_var)).sum(1)
    for i in range(1, sde.N):
        c1, c2, bt = tab.posterior_mean_coef1[i], tab.posterior_mean_coef2[i], tab.posterior_variance[i]
        d = ((c2 - A[i]) * abar[i].sqrt() + c1) * x - B[i]
        ed2 = d ** 2 + (c2 - A[i]) ** 2 * (1 - abar[i])
        out[:, i] = (0.5 * (torch.log(V[i] / bt) + bt / V[i] - 1 + ed2 / V[i])).sum(1)
    a_last = abar[-1]
    prior = (0.5 * ((1 - a_last) + a_last * x ** 2 - 1 - torch.log(1 - a_last))).sum(1)
    return prior, out


@pytest.fixture(scope="module")
def gaussian_points():
    return MEAN + STD * torch.randn(4, 2, generator=gen(20), dtype=F64)


@pytest.mark.parametrize("variance", ["posterior", "forward"])
def test_vlb_terms_match_closed_form_kls(gaussian_points, variance):
    sde, x = chain_sde(), gaussian_points
    dec_var = default_decoder_std(sde) ** 2
    prior, closed = closed_form_terms(sde, x, variance, dec_var)
    R = 400  # draws of every term: the 4 points repeated R times in one batch
    terms = vlb_terms(sde, exact_chain_score(sde), x.repeat(R, 1), variance=variance, generator=gen(21))
    assert terms.nfe == sde.N
    assert torch.allclose(terms.prior[:4], prior, rtol=0, atol=1e-10)
    assert torch.allclose(prior_kl(sde, x), prior, rtol=0, atol=1e-10)
    per_draw = terms.terms.reshape(R, 4, sde.N)
    mean, se = per_draw.mean(0), per_draw.std(0) / math.sqrt(R)
    # 200 comparisons (4 points x 50 levels): |z| < 4.5 keeps the family-wise false alarm < 1e-3
    z = (mean - closed) / se.clamp(min=1e-12)
    assert float(z.abs().max()) < 4.5, z.abs().max()
    # the exact sum's expectation is the closed-form VLB, and it bounds the exact log-likelihood
    vlb = -(prior + closed.sum(1))
    total = per_draw.sum(2) + prior
    assert float(((-total.mean(0) - vlb) / (total.std(0) / math.sqrt(R))).abs().max()) < Z_MAX
    exact = exact_model_logp(sde, x, variance, dec_var)
    assert bool((vlb < exact).all())


@pytest.mark.parametrize("variance", ["posterior", "forward"])
def test_ddpm_vlb_monte_carlo_over_levels_is_unbiased(gaussian_points, variance):
    sde, x = chain_sde(), gaussian_points
    prior, closed = closed_form_terms(sde, x, variance, default_decoder_std(sde) ** 2)
    vlb = -(prior + closed.sum(1))
    bound, stderr, nfe = ddpm_vlb(sde, exact_chain_score(sde), x, n_terms=1000, variance=variance,
                                  generator=gen(22))
    assert nfe == 1000
    assert float(((bound - vlb) / stderr).abs().max()) < Z_MAX
    exact_sum, se_nan, nfe = ddpm_vlb(sde, exact_chain_score(sde), x, variance=variance, generator=gen(23))
    assert nfe == sde.N and bool(torch.isnan(se_nan).all()) and exact_sum.shape == (4,)


def test_continuous_time_scores_are_read_at_the_levels_log_snr(gaussian_points):
    # VP keeps alpha^2 + sigma^2 = 1 in continuous time and on the chain, so at the time with level i's
    # log-SNR the continuous marginal is level i's: the exact continuous-time score read there gives
    # the chain's terms (grid times would need the score at t = 0, where sigma_0 = 0)
    sde, x = chain_sde(), gaussian_points

    def continuous_score(y, t):
        a, s = sde.marginal_coeffs(t)
        return -(y - a[:, None] * MEAN) / (a[:, None] ** 2 * STD ** 2 + s[:, None] ** 2)

    grid = vlb_terms(sde, exact_chain_score(sde), x, generator=gen(26))
    snr = vlb_terms(sde, continuous_score, x, score_times="log_snr", generator=gen(26))
    # the last levels of a 50-level chain lie beyond T in log-SNR (t up to 1.08; for DDPM's N = 1000 the
    # last 4 levels, t <= 1.0034) and are read at T: compare the others exactly, those only for finiteness
    alpha, sigma = sde.discrete_marginal(torch.arange(sde.N), x)
    inside = sde.inverse_log_snr(2 * (alpha.log() - sigma.log())) <= sde.T
    assert int((~inside).sum()) == 4
    assert torch.allclose(snr.terms[:, inside], grid.terms[:, inside], rtol=1e-7, atol=1e-9)
    assert bool(torch.isfinite(snr.terms).all())
    with pytest.raises(ValueError, match="score_times"):
        vlb_terms(sde, continuous_score, x, score_times="index")


def test_iw_bound_rises_from_the_vlb_to_the_exact_likelihood(gaussian_points):
    # "posterior" variance: a 4-nat gap between VLB and log p_theta at N = 50, closed by K ~ 1000
    sde, x, variance = chain_sde(), gaussian_points, "posterior"
    dec_var = default_decoder_std(sde) ** 2
    prior, closed = closed_form_terms(sde, x, variance, dec_var)
    vlb, exact = -(prior + closed.sum(1)), exact_model_logp(sde, x, variance, dec_var)
    log_w, nfe = iw_log_weights(sde, exact_chain_score(sde), x, 8000, variance=variance, generator=gen(24))
    assert nfe == 8000 * sde.N and log_w.shape == (4, 8000)
    estimates = {K: iw_from_log_weights(log_w, K) for K in (1, 10, 100, 1000)}
    b1, se1 = estimates[1]
    assert float(((b1 - vlb) / se1).abs().max()) < Z_MAX                  # IW_1 estimates the VLB
    means = []
    for K, (b, se) in estimates.items():
        assert float(((b - exact) / se).max()) < Z_MAX, K                   # never above log p
        means.append(float((b - exact).mean()))
    assert means[0] < means[1] < means[2]                                   # -4.0, -0.5, -0.06 nats
    b, se = estimates[1000]
    # 8 groups of 1000: the remaining bias (~Var(w) / 2K) is below its standard error (~0.05)
    assert abs(float((b - exact).mean())) < Z_MAX * float(se.pow(2).mean().sqrt()) / 2 + 0.02
    bound, stderr, nfe = iw_bound(sde, exact_chain_score(sde), x, K=10, repeats=3, variance=variance,
                                  generator=gen(25), paths_per_call=7)
    assert nfe == 30 * sde.N and bool(torch.isfinite(stderr).all())


# ----------------------------------------------------------------------------- discretised decoder
@pytest.mark.parametrize("centered", [True, False])
def test_discretised_decoder_is_a_distribution_over_levels(centered):
    K = 17
    levels = torch.arange(K, dtype=F64)
    y = (levels + 0.5) / K                                     # cell centres, datasets.dequantize(uniform=False)
    x = (2 * y - 1 if centered else y)[:, None].expand(K, 5)
    means = torch.tensor([-1.3, -0.2, 0.01, 0.55, 1.7], dtype=F64)
    for std in (1e-4, 0.01, 0.2, 3.0):
        logp = discretized_gaussian_log_likelihood(x, means.expand(K, 5), std, K, centered=centered)
        assert torch.allclose(logp.exp().sum(0), torch.ones(5, dtype=F64), atol=1e-12)
        assert bool((logp <= 0).all())
    # any point of a cell scores its level, the edge values included
    lo_edge = (2 * levels / K - 1) if centered else levels / K
    a = discretized_gaussian_log_likelihood(lo_edge[:, None], torch.zeros(K, 1, dtype=F64), 0.3, K, centered)
    b = discretized_gaussian_log_likelihood(x[:, :1], torch.zeros(K, 1, dtype=F64), 0.3, K, centered)
    assert torch.equal(a, b)


def test_discretised_decoder_tails_are_accurate():
    # far from the mean both tails keep full precision (no log(0)): compare with float64 Phi differences
    x = torch.tensor([[0.5]], dtype=F64)   # K = 4 centred: cell [0.5, 1) -> open top cell [0.5, inf)
    for mean, std in ((-1.0, 0.1), (2.5, 0.1), (0.7, 1e-3)):
        logp = discretized_gaussian_log_likelihood(x, torch.tensor([[mean]], dtype=F64), std, 4)
        ref = math.log(0.5 * math.erfc((0.5 - mean) / (std * math.sqrt(2))))
        assert math.isfinite(float(logp)) and abs(float(logp) - ref) < 1e-9 * max(1.0, abs(ref))


def test_discrete_bounds_on_digit_like_data_are_log_probabilities():
    # 17-level 2-pixel data at cell centres, exact chain score of N(MEAN, STD^2): every bound is a
    # log-probability of the levels (<= 0) and IW_K does not fall below the VLB
    sde, K = chain_sde(), 17
    v = torch.tensor([[3, 12], [8, 8], [0, 16]])
    x = 2 * (v.to(F64) + 0.5) / K - 1
    score = exact_chain_score(sde)
    vlb, _, _ = ddpm_vlb(sde, score, x.repeat(200, 1), num_levels=K, generator=gen(30))
    vlb_mean = vlb.reshape(200, 3).mean(0)
    iw, iw_se, _ = iw_bound(sde, score, x, K=100, repeats=4, num_levels=K, generator=gen(31))
    assert bool((vlb <= 0).all()) and bool((iw <= 0).all())
    assert float(((vlb_mean - iw) / iw_se).max()) < Z_MAX


def test_bits_per_dim_bound_conventions():
    logp, se = torch.tensor([-100.0]), torch.tensor([2.0])
    bpd, bpd_se = bits_per_dim_bound(logp, se, 64)
    assert torch.allclose(bpd, 100.0 / (64 * math.log(2.0)) * torch.ones(1))
    assert torch.allclose(bpd_se, 2.0 / (64 * math.log(2.0)) * torch.ones(1))
    bpd, _ = bits_per_dim_bound(logp, se, 64, num_levels=17, centered=True)
    assert torch.equal(bpd, bits_per_dim(logp, 64, num_levels=17, centered=True))


def test_chain_bounds_check_arguments():
    sde, x = chain_sde(), torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="variance"):
        vlb_terms(sde, exact_chain_score(sde), x, variance="large")
    with pytest.raises(ValueError, match="N >= 2"):
        ddpm_vlb(VPSDE(beta_max=0.5, N=1), exact_chain_score(sde), x)
    with pytest.raises(ValueError, match="multiple of K"):
        iw_from_log_weights(torch.zeros(2, 10), 3)
    with pytest.raises(ValueError, match="num_levels"):
        vlb_terms(sde, exact_chain_score(sde), x, num_levels=1)
