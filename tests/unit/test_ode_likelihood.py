"""Probability-flow ODE sampling/encoding and exact likelihoods, checked against Gaussian mixtures
whose log-density is known in closed form at every time (sde_lib.GaussianMixture).

Error bars: samples as in test_pc_sampler.py (Z = 4 standard errors, tests/gmm_utils.py). Likelihoods:
with float64 and dopri5 at rtol = atol = 1e-7 the measured error against the exact log p_eps is
~2e-5 nats (VP, sub-VP, VE); at the default 1e-5 it is up to 1e-2, hence the tight tolerances for the
1e-3 check. Hutchinson estimates are unbiased, so their mean over R independent probes must be within
4 standard errors (sample std / sqrt(R)) plus the 1e-3 integration allowance of the exact value.
"""
import math

import pytest
import torch

from gmm_utils import (
    assert_matches_mixture, gen, make_test_mixture, reference_sample, shared_time_score,
)
from scoresde.samplers import bits_per_dim, log_likelihood, ode_encode, ode_sample, pc_sample
from scoresde.score import CountingScore
from scoresde.sde_lib import GaussianMixture, VESDE, VPSDE, subVPSDE

MIX = make_test_mixture()
F64 = torch.float64
TIGHT = dict(rtol=1e-7, atol=1e-7, dtype=F64)


def make_sde(name):
    # VE with sigma_max = 10: 5x the data's radius, so the prior N(0, 100 I) still covers p_T
    return {"vp": VPSDE, "subvp": subVPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}[name]()


def exact_logp(sde, x, eps=1e-5):
    return MIX.log_prob_t(sde, x, torch.full((x.shape[0],), eps, dtype=F64))


@pytest.fixture(scope="module")
def points():
    return MIX.sample(200, generator=gen(1), dtype=F64)


# ------------------------------------------------------------------ ODE sampling and encoding

@pytest.fixture(scope="module")
def reference():
    return reference_sample()


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("method,steps", [("dopri5", None), ("rk4", 25)])
def test_ode_sample_reproduces_mixture(reference, sde_name, method, steps):
    sde = make_sde(sde_name)
    counter = CountingScore(shared_time_score(MIX, sde))
    x, nfe = ode_sample(sde, counter, (3000, 2), method=method, steps=steps, generator=gen(2))
    assert nfe == counter.nfe
    if steps is not None:
        assert nfe == 4 * steps + 1  # torchdiffeq's rk4 (3/8 rule): 4 evaluations a step, + Tweedie
    assert_matches_mixture(MIX, x, reference, generator=gen(3), label=f"{sde_name} ODE {method}")


@pytest.mark.parametrize("method,stages", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_nfe_is_exact(method, stages):
    sde = VPSDE()
    counter = CountingScore(MIX.score_fn(sde))
    _, nfe = ode_sample(sde, counter, (16, 2), method=method, steps=7, denoise=False, generator=gen(0))
    assert nfe == counter.nfe == 7 * stages


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_encode_decode_round_trip(points, sde_name):
    sde = make_sde(sde_name)
    score = MIX.score_fn(sde)
    z, nfe_enc = ode_encode(sde, score, points, rtol=1e-7, atol=1e-7)
    x, nfe_dec = ode_sample(sde, score, points.shape, z=z, denoise=False, rtol=1e-7, atol=1e-7)
    assert z.dtype == F64 and nfe_enc > 0 and nfe_dec > 0
    assert (x - points).abs().max() < 1e-4
    # the latent is distributed as p_T: for VP ~ N(0, I) (alpha_T = 0.0066 keeps the means < 0.02)
    if sde_name == "vp":
        assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / z.numel()) + 0.02


def test_scipy_rk45_matches_dopri5(points):
    sde = VPSDE()
    z_ref, _ = ode_encode(sde, MIX.score_fn(sde), points, rtol=1e-7, atol=1e-7)
    z, nfe = ode_encode(sde, MIX.score_fn(sde), points, method="rk45", rtol=1e-7, atol=1e-7)
    assert z.dtype == F64 and nfe > 0
    assert (z - z_ref).abs().max() < 1e-4


def test_ode_sample_reproducible():
    sde = VPSDE()
    a, _ = ode_sample(sde, MIX.score_fn(sde), (32, 2), generator=gen(0))
    b, _ = ode_sample(sde, MIX.score_fn(sde), (32, 2), generator=gen(0))
    c, _ = ode_sample(sde, MIX.score_fn(sde), (32, 2), generator=gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------ likelihood: exact trace

@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_trace_matches_exact_log_density(points, sde_name):
    sde = make_sde(sde_name)
    counter = CountingScore(MIX.score_fn(sde))
    logp, z, nfe = log_likelihood(sde, counter, points, prior_logp=MIX.prior_logp_fn(sde), **TIGHT)
    assert logp.shape == (200,) and logp.dtype == F64 and z.shape == points.shape
    assert nfe == counter.nfe
    assert (logp - exact_logp(sde, points)).abs().max() < 1e-3


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_default_prior_differs_by_the_prior_mismatch(points, sde_name):
    # Same ODE, different prior: logp_default - logp_exact = sde.prior_logp(z) - log p_T(z) exactly.
    # That mismatch is bounded: log p_T(z) = log sum_k w_k N_k(z) lies between min_k and max_k of
    # log N_k(z), the components N(alpha_T mu_k, alpha_T^2 S_k + sigma_T^2 I) of p_T.
    sde = make_sde(sde_name)
    exact_prior = MIX.prior_logp_fn(sde)
    lp_exact, z, _ = log_likelihood(sde, MIX.score_fn(sde), points, prior_logp=exact_prior, **TIGHT)
    lp_default, z2, _ = log_likelihood(sde, MIX.score_fn(sde), points, **TIGHT)
    assert torch.equal(z, z2)
    mismatch = sde.prior_logp(z) - exact_prior(z)
    torch.testing.assert_close(lp_default - lp_exact, mismatch, rtol=0, atol=1e-10)
    means, covs = MIX.marginal_params(sde, torch.full((z.shape[0],), sde.T, dtype=F64))
    comp = torch.distributions.MultivariateNormal(means, covs).log_prob(z[:, None, :])   # (B, K)
    assert bool((mismatch <= sde.prior_logp(z) - comp.min(1).values + 1e-9).all())
    assert bool((mismatch >= sde.prior_logp(z) - comp.max(1).values - 1e-9).all())
    assert (lp_default - exact_logp(sde, points)).abs().max() <= mismatch.abs().max() + 1e-3


def test_exact_trace_on_images():
    # (B, C, H, W) = (B, 1, 2, 2): one Gaussian with a full 4x4 covariance, flattened row-major
    a = torch.tensor([[1.0, 0.3, 0.0, 0.2], [0.0, 0.8, 0.4, 0.0], [0.1, 0.0, 0.6, 0.3], [0.0, 0.2, 0.0, 0.5]])
    gauss = GaussianMixture([1.0], [[0.5, -0.5, 1.0, 0.0]], (0.3 * a @ a.T + 0.05 * torch.eye(4))[None])
    sde = VPSDE()
    flat_score = gauss.score_fn(sde)

    def score(x, t):
        return flat_score(x.reshape(x.shape[0], 4), t).reshape(x.shape)

    def prior(z):
        return gauss.prior_logp_fn(sde)(z.reshape(z.shape[0], 4))

    x = gauss.sample(50, generator=gen(0), dtype=F64).reshape(50, 1, 2, 2)
    logp, z, _ = log_likelihood(sde, score, x, prior_logp=prior, **TIGHT)
    exact = gauss.log_prob_t(sde, x.reshape(50, 4), torch.full((50,), 1e-5, dtype=F64))
    assert z.shape == x.shape and logp.shape == (50,)
    assert (logp - exact).abs().max() < 1e-3


def test_one_score_evaluation_per_ode_step():
    # rk4 takes 4 function evaluations per step; the exact trace (D = 2 backward passes) and the
    # Hutchinson trace must each cost one score evaluation per function evaluation
    sde = VPSDE()
    x = MIX.sample(16, generator=gen(0), dtype=F64)
    for trace in ("exact", "gaussian", "rademacher"):
        counter = CountingScore(MIX.score_fn(sde))
        _, _, nfe = log_likelihood(sde, counter, x, trace=trace, method="rk4", steps=10, generator=gen(1))
        assert nfe == counter.nfe == 40


def test_scipy_rk45_likelihood_matches(points):
    sde = make_sde("subvp")
    logp, _, _ = log_likelihood(sde, MIX.score_fn(sde), points[:50], method="rk45",
                                prior_logp=MIX.prior_logp_fn(sde), **TIGHT)
    assert (logp - exact_logp(sde, points[:50])).abs().max() < 1e-3


# ------------------------------------------------------------------ likelihood: Adams predictor-corrector

# Measured on these 200 points (exact prior): mean |err| 1.6e-4 / 2.2e-4 / 1.4e-4 nats at 45 / 47 / 46 NFE
# (VP / sub-VP / VE; 46 / 51 / 49 before the PI controller of samplers/ode.py); dopri5 at its default
# 1e-5 takes 80-140 NFE for 5e-5. The bounds leave ~3x on the error and ~20 % on the NFE; a predictor without the corrector (order 4 instead of 5) or a wrong
# state scale breaks one of them.
ADAMS_FAST = dict(method="adams", rtol=1e-3, atol=1e-3)
ADAMS_NFE_BOUND = 60


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_adams_within_1e3_nats_in_60_evaluations(points, sde_name):
    sde = make_sde(sde_name)
    counter = CountingScore(MIX.score_fn(sde))
    logp, z, nfe = log_likelihood(sde, counter, points, prior_logp=MIX.prior_logp_fn(sde), **ADAMS_FAST)
    assert nfe == counter.nfe <= ADAMS_NFE_BOUND
    assert logp.dtype == z.dtype == F64 and z.shape == points.shape
    assert float((logp - exact_logp(sde, points)).abs().mean()) < 1e-3


@pytest.mark.parametrize("sde_name", ["subvp", "ve"])
def test_scaled_state_is_the_same_integral(points, sde_name):
    # x / s_t with s_t^2 = alpha^2 + sigma^2 changes the variables, not the answer: at tight tolerance
    # both agree with the exact log-density (measured max error 1-3e-6) and with each other, and the
    # latent z is returned unscaled. Without the D log(s_T / s_eps) term VE would be off by ~2 log(10).
    sde = make_sde(sde_name)
    runs = [log_likelihood(sde, MIX.score_fn(sde), points[:50], scale_state=flag,
                           prior_logp=MIX.prior_logp_fn(sde), **TIGHT) for flag in (True, False)]
    (lp_s, z_s, _), (lp_x, z_x, _) = runs
    assert (lp_s - exact_logp(sde, points[:50])).abs().max() < 1e-4
    assert (lp_s - lp_x).abs().max() < 1e-4 and (z_s - z_x).abs().max() < 1e-4


def test_adams_solver_closed_forms():
    from scoresde.integrate import integrate
    # y' = 1 + 2 t: the Adams-Moulton corrector integrates a linear derivative exactly at every order
    # (from the trapezoid rule of the first step on), whatever the step sizes: y(1) = y(0) + 2.
    y0 = torch.zeros(3, 1, dtype=F64)
    y = integrate(lambda t, y: (1 + 2 * t) * torch.ones_like(y), y0, 0.0, 1.0, "adams", 1e-6, 1e-6)
    assert (y - 2.0).abs().max() < 1e-13
    # y' = cos(t) y: y(t) = y0 exp(sin t). The error follows the tolerance (global error ~ tol for
    # this controller) and falls ~10x per 10x tolerance (measured ratios 9-30; an order-1 or order-2
    # method would need far more steps, a wrong weight leaves an O(1) error).
    y0 = torch.tensor([[1.0], [-2.0]], dtype=F64)
    errs = []
    for tol in (1e-4, 1e-6, 1e-8):
        y = integrate(lambda t, y: torch.cos(t) * y, y0, 0.0, 3.0, "adams", tol, tol)
        errs.append(float((y - y0 * math.exp(math.sin(3.0))).abs().max()))
    assert errs[0] < 1e-3 and errs[2] < errs[1] / 10 < errs[0] / 100, errs


def test_adams_agrees_with_dopri5_on_a_network():
    # A random MLP "score" (no closed form): adams at its default tolerance must agree with dopri5
    # at 1e-8 to well within 1e-3 nats (measured 2e-6 on bench-like networks, VP / sub-VP / VE).
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2)).double()
    sde = make_sde("ve")

    def score(x, t):
        sigma = sde.marginal_coeffs(t)[1][:, None]
        return -net(torch.cat([x, sigma.log()], 1)) / sigma

    x = MIX.sample(32, generator=gen(7), dtype=F64)
    ref, _, _ = log_likelihood(sde, score, x, method="dopri5", rtol=1e-8, atol=1e-8)
    logp, _, nfe = log_likelihood(sde, score, x, method="adams")
    assert (logp - ref).abs().max() < 1e-4, nfe


# ------------------------------------------------------------------ likelihood: Hutchinson traces

@pytest.fixture(scope="module")
def hutchinson_runs():
    """8 points, each repeated R = 256 times with an independent probe, for both probe kinds."""
    sde = VPSDE()
    x = MIX.sample(8, generator=gen(2), dtype=F64)
    reps = x.repeat_interleave(256, dim=0)
    out = {"exact": exact_logp(sde, x)}
    for trace in ("gaussian", "rademacher"):
        logp, _, _ = log_likelihood(sde, shared_time_score(MIX, sde), reps, trace=trace, rtol=1e-6,
                                    atol=1e-6, dtype=F64, prior_logp=MIX.prior_logp_fn(sde),
                                    generator=gen(3))
        out[trace] = logp.reshape(8, 256)
    return out


@pytest.mark.parametrize("trace", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(hutchinson_runs, trace):
    est = hutchinson_runs[trace]
    se = est.std(dim=1) / math.sqrt(est.shape[1])
    assert bool((se > 0).all())
    assert bool(((est.mean(dim=1) - hutchinson_runs["exact"]).abs() < 4 * se + 1e-3).all())


def test_rademacher_in_two_dimensions_is_exact_at_its_midpoint(hutchinson_runs):
    # The probe is fixed along the path, which does not depend on it, so the estimate is v^T M v with
    # M = ∫ J dt. In D = 2 with v in {±1}^2 that is tr M ± 2 M_12: two values whose midpoint is exact.
    for est, exact in zip(hutchinson_runs["rademacher"], hutchinson_runs["exact"]):
        lo, hi = est.min(), est.max()
        assert bool(((est - lo).abs() < 1e-6).logical_or((est - hi).abs() < 1e-6).all())
        assert abs(float((lo + hi) / 2 - exact)) < 1e-3


def test_more_probes_average_down():
    sde = VPSDE()
    x = MIX.sample(2, generator=gen(4), dtype=F64).repeat_interleave(128, dim=0)
    kwargs = dict(trace="gaussian", rtol=1e-5, atol=1e-5, dtype=F64, method="rk4", steps=20)
    one, _, _ = log_likelihood(sde, shared_time_score(MIX, sde), x, generator=gen(5), **kwargs)
    four, _, _ = log_likelihood(sde, shared_time_score(MIX, sde), x, generator=gen(5), n_probes=4, **kwargs)
    ratio = four.reshape(2, 128).std(1) / one.reshape(2, 128).std(1)
    # std should halve; the ratio of two 128-sample stds has relative s.e. ~ sqrt(1/128) ~ 9% -> +-4 s.e.
    assert bool(((ratio - 0.5).abs() < 4 * 0.5 * math.sqrt(1 / 128)).all())


def test_hutchinson_reproducible():
    sde = VPSDE()
    x = MIX.sample(8, generator=gen(0))
    run = lambda seed: log_likelihood(sde, MIX.score_fn(sde), x, trace="rademacher", method="rk4",
                                      steps=5, generator=gen(seed))[0]
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_dtype_follows_input_unless_given():
    sde = VPSDE()
    x = MIX.sample(4, generator=gen(0))
    logp, z, _ = log_likelihood(sde, MIX.score_fn(sde), x, method="euler", steps=3)
    assert logp.dtype == z.dtype == torch.float32
    logp, z, _ = log_likelihood(sde, MIX.score_fn(sde), x, method="euler", steps=3, dtype=F64)
    assert logp.dtype == z.dtype == F64


# ------------------------------------------------------------------ bits per dimension

def test_bits_per_dim_matches_reference_offsets():
    logp = torch.randn(10, dtype=F64) * 500 - 3000
    D = 3 * 32 * 32
    ref = -logp / (D * math.log(2))
    torch.testing.assert_close(bits_per_dim(logp, D, centered=True), ref + 7)
    torch.testing.assert_close(bits_per_dim(logp, D, centered=False), ref + 8)
    torch.testing.assert_close(bits_per_dim(logp, D, log_det=D * math.log(2)), ref + 7)


@pytest.mark.parametrize("centered", [False, True])
def test_bits_per_dim_of_a_piecewise_constant_model_is_the_discrete_entropy(centered):
    # A model whose density is constant on each dequantisation cell, p(y) = K P(v) on cell v, assigns
    # the discrete data exactly log P(v): bits/dim must equal -log2 P(v) / D, for any dequantisation u.
    K, D, B = 16, 3, 100
    probs = torch.softmax(torch.randn(K, generator=gen(0), dtype=F64), 0)
    v = torch.multinomial(probs, B * D, replacement=True, generator=gen(1)).reshape(B, D)
    y = (v + torch.rand(B, D, generator=gen(2), dtype=F64)) / K
    x = 2 * y - 1 if centered else y
    log_px = (torch.log(K * probs[v]) - (math.log(2) if centered else 0.0)).sum(1)  # p(x) = p(y) / 2^D
    assert torch.isfinite(x).all()
    expected = -torch.log2(probs[v]).sum(1) / D
    torch.testing.assert_close(bits_per_dim(log_px, D, num_levels=K, centered=centered), expected)


def test_bits_per_dim_uniform_model_is_log2_k():
    # uniform data under the uniform density on [0, 1]^D (log p = 0) or [-1, 1]^D (log p = -D log 2)
    D = 5
    assert float(bits_per_dim(torch.zeros(1), D, num_levels=256)) == pytest.approx(8.0)
    assert float(bits_per_dim(torch.full((1,), -D * math.log(2)), D, num_levels=32, centered=True)) \
        == pytest.approx(5.0)


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("kwargs,needle", [
    ({"trace": "hutch"}, "trace"),
    ({"rtol": 0.0}, "rtol"),
    ({"atol": -1e-5}, "atol"),
    ({"eps": 0.0}, "eps"),
    ({"eps": 1.0}, "eps"),
    ({"method": "heun"}, "method"),
    ({"method": "rk4"}, "steps"),
    ({"steps": 10}, "steps"),
    ({"method": "rk4", "steps": 0}, "steps"),
    ({"n_probes": 0}, "n_probes"),
    ({"prior_logp": 3.0}, "prior_logp"),
    ({"scale_state": "yes"}, "scale_state"),
    ({"method": "adams", "steps": 5}, "steps"),
])
def test_likelihood_bad_arguments(kwargs, needle):
    sde = VPSDE()
    with pytest.raises(ValueError, match=needle):
        log_likelihood(sde, MIX.score_fn(sde), torch.zeros(4, 2), **kwargs)


def test_likelihood_rejects_nan_and_non_differentiable_scores():
    sde = VPSDE()
    x = torch.zeros(4, 2)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        log_likelihood(sde, MIX.score_fn(sde), x)
    detached = lambda y, t: MIX.score_fn(sde)(y, t).detach()
    with pytest.raises(ValueError, match="differentiable"):
        log_likelihood(sde, detached, torch.zeros(4, 2))


@pytest.mark.parametrize("kwargs,needle", [
    ({"method": "foo"}, "method"), ({"method": "euler"}, "steps"), ({"rtol": float("nan")}, "rtol"),
    ({"eps": -0.1}, "eps"), ({"z": torch.zeros(5, 2)}, "z"),
])
def test_ode_sample_bad_arguments(kwargs, needle):
    sde = VPSDE()
    with pytest.raises(ValueError, match=needle):
        ode_sample(sde, MIX.score_fn(sde), (4, 2), **kwargs)


def test_ode_encode_rejects_nan():
    sde = VPSDE()
    with pytest.raises(ValueError, match="x"):
        ode_encode(sde, MIX.score_fn(sde), torch.full((2, 2), float("nan")))


def test_bits_per_dim_bad_arguments():
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(torch.zeros(2), 0)
    with pytest.raises(ValueError, match="num_levels"):
        bits_per_dim(torch.zeros(2), 4, num_levels=1)
    with pytest.raises(ValueError, match="either"):
        bits_per_dim(torch.zeros(2), 4, centered=True, log_det=1.0)


def test_progress_bars_change_nothing():
    sde = VPSDE(N=30)
    score = MIX.score_fn(sde)
    x = MIX.sample(8, generator=gen(0))
    runs = []
    for show in (False, True):
        pc, _ = pc_sample(sde, score, (8, 2), generator=gen(1), progress=show)
        ode, _ = ode_sample(sde, score, (8, 2), generator=gen(1), progress=show)
        rk45, _ = ode_encode(sde, score, x, method="rk45", progress=show)
        logp, _, _ = log_likelihood(sde, score, x, method="rk4", steps=4, progress=show)
        runs.append((pc, ode, rk45, logp))
    for without_bar, with_bar in zip(*runs):
        assert torch.equal(without_bar, with_bar)
