"""Checks of the few-step samplers (DPM-Solver++ and DDIM: ``samplers.dpm_solver``, ``ddim``) against exact answers.

- Gaussian data ``N(mu, s^2 I)``: the probability-flow ODE is affine, ``x_t = alpha_t mu + sqrt(v_t) w``
  with ``v_t = alpha_t^2 s^2 + sigma_t^2`` and ``w`` constant along the flow (``dv/dt = 2 f v + g^2``), so
  the exact decode of a latent ``z`` is ``x_eps = alpha_eps mu + sqrt(v_eps / v_T) (z - alpha_T mu)``.
  Errors must fall with the number of steps at the solver's order.
- Gaussian mixtures (exact scores from ``sde_lib.GaussianMixture``): samples must match the mixture
  (``tests/gmm_utils``: per-mode weights, means, covariances within ``Z_MAX`` standard errors, and an
  MMD permutation test) and stay close to a high-accuracy decode of the same latents (dopri5 at
  ``rtol = atol = 1e-7``).
"""
import math

import pytest
import torch

from scoresde import sde_lib
from gmm_utils import assert_matches_mixture
from scoresde.samplers import SKIP_TYPES, ddim_sample, fast_sample, get_time_steps, ode_sample
from scoresde.utils import append_dims

Z_MAX = 4.0

SDES = {
    "vp": lambda: sde_lib.VPSDE(),
    "subvp": lambda: sde_lib.subVPSDE(),
    "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0),
    "cosine": lambda: sde_lib.CosineVPSDE(),
}

# 2-D, four modes, unequal weights, one correlated and one elongated mode.
MIXTURE = sde_lib.GaussianMixture(
    weights=[0.4, 0.3, 0.2, 0.1],
    means=[[-2.0, 0.0], [2.0, 0.5], [0.0, 2.0], [0.5, -1.5]],
    covs=[[[0.10, 0.05], [0.05, 0.20]], [[0.05, 0.0], [0.0, 0.05]],
          [[0.30, 0.0], [0.0, 0.02]], [[0.02, 0.0], [0.0, 0.02]]],
)

# subVP at eps = 1e-3 ends at sigma/alpha ~ 1e-4 (VP: 1e-2): its log-SNR range is half again as long,
# and the default grid spends its steps there; "time_quadratic" is its best-measured grid.
MIXTURE_SKIP = {"vp": "inverse_karras", "subvp": "time_quadratic", "ve": "inverse_karras",
                "cosine": "inverse_karras"}
# Mean per-sample distance to the exact decode at 20 NFE (order 2): measured 0.024 (VP), 0.023
# (subVP, time_quadratic), 0.016 (VE), 0.027 (cosine) on 4000 latents; bounds ~1.5x that.
DECODE_BOUND_20 = {"vp": 0.04, "subvp": 0.04, "ve": 0.03, "cosine": 0.04}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- Gaussian data: the exact flow ----------------------------------------------------------------
def gaussian_score(sde, mu: torch.Tensor, s: float):
    """Exact score of ``p_t = N(alpha_t mu, (alpha_t^2 s^2 + sigma_t^2) I)``."""
    def score(x, t):
        alpha, sigma = (append_dims(c, x.ndim) for c in sde.marginal_coeffs(t))
        return -(x - alpha * mu) / (alpha ** 2 * s ** 2 + sigma ** 2)
    return score


def gaussian_flow(sde, mu: torch.Tensor, s: float, z: torch.Tensor, eps: float) -> torch.Tensor:
    """The exact probability-flow decode of ``z`` (at ``T``) to ``eps`` for Gaussian data."""
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    (alpha_T, alpha_e), (sigma_T, sigma_e) = (c.tolist() for c in sde.marginal_coeffs(ends))
    v_T, v_e = alpha_T ** 2 * s ** 2 + sigma_T ** 2, alpha_e ** 2 * s ** 2 + sigma_e ** 2
    return alpha_e * mu + math.sqrt(v_e / v_T) * (z - alpha_T * mu)


def gaussian_problem(name: str, shape):
    sde = SDES[name]()
    mu = torch.linspace(-1.0, 2.0, math.prod(shape[1:]), dtype=torch.float64).reshape(shape[1:])
    z = sde.prior_sampling(shape, generator=gen(0), dtype=torch.float64)
    return sde, mu, 0.5, z


def gaussian_error(name, shape, steps, order, skip_type="logSNR"):
    sde, mu, s, z = gaussian_problem(name, shape)
    x, nfe = fast_sample(sde, gaussian_score(sde, mu, s), shape, steps=steps, order=order, z=z,
                         denoise=False, skip_type=skip_type, lower_order_final=False)
    assert nfe == steps
    return (x - gaussian_flow(sde, mu, s, z, 1e-3)).abs().mean().item()


# Step counts in the asymptotic range, on the uniform log-SNR grid (the setting of the convergence
# theorems) and on a non-uniform one (EDM's, where the step ratios r0, r1 of 2M/3M differ from 1).
# Order 3 on the uniform grid is checked at coarser grids: its first (warm-up) step is first order,
# an O(h^2) term that takes over once the error is below ~1e-5.
ORDER_STEPS = {1: (20, 40, 80), 2: (20, 40, 80), 3: (20, 40, 80)}
UNIFORM_ORDER3_STEPS = (10, 20, 40)


@pytest.mark.parametrize("skip_type", ["logSNR", "karras"])
@pytest.mark.parametrize("shape", [(64, 1), (64, 2), (16, 1, 4, 4)], ids=["1d", "2d", "image"])
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("order", [1, 2, 3])
def test_gaussian_convergence_order(name, shape, order, skip_type):
    """Doubling the steps divides the error by 2^order: for orders 1 and 2 the observed rate
    log2(e_n / e_2n) lies within 0.3 of the order (a factor 2^0.3 = 1.23 in the reduction); order 3
    must reach 2.5 (a 5.7x reduction) -- on this problem it runs ahead of 3 (measured 3.0-5.6)."""
    steps = UNIFORM_ORDER3_STEPS if (order, skip_type) == (3, "logSNR") else ORDER_STEPS[order]
    errs = [gaussian_error(name, shape, n, order, skip_type) for n in steps]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    if order < 3:
        assert all(abs(r - order) < 0.3 for r in rates), (errs, rates)
    else:
        assert all(r > 2.5 for r in rates), (errs, rates)


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_unipc_corrector_adds_an_order(name, variant):
    """UniPC with the UniP-2 predictor: the UniC corrector makes it third order at one evaluation per step
    (Zhao et al. 2023, Thm. 3.1), so on the exact Gaussian flow the observed rate log2(e_n / e_2n) at
    40 / 80 / 160 steps (uniform log-SNR) lies within 0.3 of 3 (measured 2.93-3.09; at 20 steps sub-VP bh2 is still at 2.7); without the
    corrector it would be 2 (DPM-Solver++(2M), measured 1.9-2.0)."""
    sde, mu, s, z = gaussian_problem(name, (64, 2))
    errs = []
    for n in (40, 80, 160):
        x, nfe = fast_sample(sde, gaussian_score(sde, mu, s), z.shape, steps=n, order=2, z=z, denoise=False,
                             skip_type="logSNR", lower_order_final=False, solver="unipc", unipc_variant=variant)
        assert nfe == n
        errs.append((x - gaussian_flow(sde, mu, s, z, 1e-3)).abs().mean().item())
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(r - 3) < 0.3 for r in rates), (errs, rates)


def test_unipc_order_1_is_ddim_plus_trapezoid():
    """With one step there is nothing to correct: UniPC is DDIM; with more steps it differs."""
    sde, mu, s, z = gaussian_problem("vp", (16, 2))
    score = gaussian_score(sde, mu, s)
    one = [fast_sample(sde, score, z.shape, steps=1, order=2, z=z, solver=sv)[0] for sv in ("unipc", "dpmsolver++")]
    assert torch.equal(one[0], one[1])
    five = [fast_sample(sde, score, z.shape, steps=5, order=2, z=z, solver=sv)[0] for sv in ("unipc", "dpmsolver++")]
    assert not torch.allclose(five[0], five[1])


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_accuracy_default_grid(name):
    """On the default grid at 20 steps: errors ordered by the solver order, order 3 below 2e-2 (measured
    max 1.6e-2, subVP); ``denoise`` adds one evaluation, Tweedie's ``E[x_0 | x_eps]`` of the solver's ``x_eps``."""
    shape = (64, 2)
    sde, mu, s, z = gaussian_problem(name, shape)
    score = gaussian_score(sde, mu, s)
    exact = gaussian_flow(sde, mu, s, z, 1e-3)
    errs = {}
    for order in (1, 2, 3):
        x, _ = fast_sample(sde, score, shape, steps=20, order=order, z=z, denoise=False)
        errs[order] = (x - exact).abs().mean().item()
    assert errs[3] < 2e-2 and errs[2] < errs[1] / 4 and errs[3] < errs[1] / 4, errs
    x_eps, _ = fast_sample(sde, score, shape, steps=20, order=3, z=z, denoise=False)
    x, nfe = fast_sample(sde, score, shape, steps=20, order=3, z=z, denoise=True)
    alpha, sigma = (c.item() for c in sde.marginal_coeffs(torch.tensor([1e-3], dtype=torch.float64)))
    tweedie = mu + alpha * s ** 2 / (alpha ** 2 * s ** 2 + sigma ** 2) * (x_eps - alpha * mu)
    assert nfe == 21
    assert (x - tweedie).abs().max().item() < 1e-12


def test_float32_matches_float64():
    sde, mu, s, z = gaussian_problem("vp", (64, 2))
    x64, _ = fast_sample(sde, gaussian_score(sde, mu, s), (64, 2), steps=20, order=3, z=z)
    x32, _ = fast_sample(sde, gaussian_score(sde, mu.float(), s), (64, 2), steps=20, order=3, z=z.float())
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    assert (x32.double() - x64).abs().max().item() < 1e-4


# ----- mixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decodes():
    """Per SDE: 1000 float64 latents and their high-accuracy decode (dopri5, rtol = atol = 1e-7)."""
    out = {}
    for name, make in SDES.items():
        sde = make()
        z = sde.prior_sampling((1000, 2), generator=gen(1), dtype=torch.float64)
        x, _ = ode_sample(sde, MIXTURE.score_fn(sde), z.shape, rtol=1e-7, atol=1e-7, z=z)
        out[name] = (sde, z, x)
    return out


@pytest.mark.parametrize("name", list(SDES))
def test_mixture_decode_matches_accurate_ode(name, decodes):
    """Same latents, exact score: the mean per-sample distance to the accurate decode at 20 NFE is
    below ``DECODE_BOUND_20``, at least halves from 10 to 20 NFE, and beats DDIM's by 3x."""
    sde, z, exact = decodes[name]
    score, skip = MIXTURE.score_fn(sde), MIXTURE_SKIP[name]

    def err(steps, order):
        x, nfe = fast_sample(sde, score, z.shape, steps=steps, order=order, z=z, skip_type=skip)
        assert nfe == steps + 1
        return (x - exact).norm(dim=1).mean().item()

    e = {(n, o): err(n, o) for n in (10, 20) for o in (1, 2, 3)}
    report = {f"{o}@{n}": round(v, 4) for (n, o), v in e.items()}
    assert e[20, 2] < DECODE_BOUND_20[name] and e[20, 3] < DECODE_BOUND_20[name], report
    assert e[20, 2] < e[10, 2] / 2 and e[20, 3] < e[10, 3] / 2, report
    assert e[20, 2] < e[20, 1] / 3 and e[20, 3] < e[20, 1] / 3, report


@pytest.mark.parametrize("name", list(SDES))
def test_fast_sample_reproduces_mixture(name):
    """20-step DPM-Solver++(2M) samples match fresh data: mode weights, per-mode means and covariances
    within Z_MAX standard errors after an allowance for the discretisation bias (measured against the
    accurate decode of the same 4000 latents: at most 0.003 / 0.015 / 0.021), and the MMD test."""
    sde = SDES[name]()
    x, nfe = fast_sample(sde, MIXTURE.score_fn(sde), (4000, 2), steps=20, generator=gen(2),
                         skip_type=MIXTURE_SKIP[name])
    assert nfe == 21
    reference = MIXTURE.sample(4000, generator=gen(3))
    assert_matches_mixture(MIXTURE, x, reference, z_max=Z_MAX, generator=gen(4), label=name,
                           tol={"weights": 0.005, "means": 0.02, "covs": 0.03})


@pytest.mark.parametrize("name", list(SDES))
def test_stochastic_ddim_reproduces_mixture(name):
    """DDIM with eta = 1 (DDPM-like ancestral steps), 100 steps: a match within Z_MAX standard errors,
    no allowance."""
    sde = SDES[name]()
    x, nfe = ddim_sample(sde, MIXTURE.score_fn(sde), (4000, 2), steps=100, eta=1.0, generator=gen(5))
    assert nfe == 101
    reference = MIXTURE.sample(4000, generator=gen(6))
    assert_matches_mixture(MIXTURE, x, reference, z_max=Z_MAX, generator=gen(7), label=name)


def test_stochastic_ddim_fails_on_the_wrong_data():
    """The statistical check has power: samples of a shifted mixture are rejected."""
    sde = SDES["vp"]()
    shifted = sde_lib.GaussianMixture(MIXTURE.weights, MIXTURE.means + 0.05, MIXTURE.covs)
    x, _ = ddim_sample(sde, shifted.score_fn(sde), (4000, 2), steps=100, eta=1.0, generator=gen(5))
    with pytest.raises(AssertionError, match="z-scores above"):
        assert_matches_mixture(MIXTURE, x, MIXTURE.sample(4000, generator=gen(6)), z_max=Z_MAX,
                               generator=gen(7))


# ----- DDIM, randomness, NFE ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_ddim_eta0_is_first_order_fast_sample(name, skip_type):
    sde = SDES[name]()
    score = MIXTURE.score_fn(sde)
    a, nfe_a = ddim_sample(sde, score, (50, 2), steps=12, eta=0.0, generator=gen(8), skip_type=skip_type)
    b, nfe_b = fast_sample(sde, score, (50, 2), steps=12, order=1, generator=gen(8), skip_type=skip_type)
    assert torch.equal(a, b) and nfe_a == nfe_b == 13


def test_lower_order_final_makes_two_steps_first_order():
    """With 2 steps, 2M warms up with order 1 and ends with order 1: exactly DDIM; without the
    lowering its last step is second order."""
    sde = SDES["vp"]()
    score = MIXTURE.score_fn(sde)
    ddim, _ = fast_sample(sde, score, (50, 2), steps=2, order=1, generator=gen(8))
    low, _ = fast_sample(sde, score, (50, 2), steps=2, order=2, generator=gen(8))
    full, _ = fast_sample(sde, score, (50, 2), steps=2, order=2, generator=gen(8), lower_order_final=False)
    assert torch.equal(low, ddim) and not torch.allclose(full, ddim)


@pytest.mark.parametrize("sampler", ["fast", "ddim_eta1"])
def test_generator_reproducibility(sampler):
    sde = SDES["vp"]()
    score = MIXTURE.score_fn(sde)

    def run(seed, z=None):
        if sampler == "fast":
            return fast_sample(sde, score, (64, 2), steps=5, generator=gen(seed), z=z)[0]
        return ddim_sample(sde, score, (64, 2), steps=5, eta=1.0, generator=gen(seed), z=z)[0]

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    z = sde.prior_sampling((64, 2), generator=gen(9))
    if sampler == "ddim_eta1":  # with a fixed latent only the step noise differs
        assert not torch.allclose(run(0, z), run(1, z))
    else:  # deterministic given the latent
        assert torch.equal(run(0, z), run(1, z))


@pytest.mark.parametrize("steps,order,denoise", [(1, 1, False), (1, 3, True), (3, 3, False), (7, 2, True),
                                                 (16, 3, True)])
def test_nfe_is_exact(steps, order, denoise):
    sde = SDES["ve"]()
    calls = []

    def score(x, t):
        calls.append(t[0].item())
        return MIXTURE.score_t(sde, x, t)

    x, nfe = fast_sample(sde, score, (8, 2), steps=steps, order=order, denoise=denoise, generator=gen(0))
    grid = get_time_steps(sde, steps, eps=1e-3).tolist()  # evaluated at t_0..t_{steps-1} (+ eps)
    assert nfe == len(calls) == steps + int(denoise)
    assert calls == pytest.approx(grid[:steps] + grid[steps:] * int(denoise), rel=1e-6)
    assert torch.isfinite(x).all()
    _, nfe = ddim_sample(sde, score, (8, 2), steps=steps, eta=0.5, denoise=denoise, generator=gen(0))
    assert nfe == steps + int(denoise)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("skip_type", SKIP_TYPES)
def test_time_grid(name, skip_type):
    sde = SDES[name]()
    t = get_time_steps(sde, 10, eps=1e-3, skip_type=skip_type)
    assert t.dtype == torch.float64 and t.shape == (11,)
    assert t[0].item() == sde.T and t[-1].item() == 1e-3
    assert bool((t[1:] < t[:-1]).all())
    lam = sde.log_snr(t)
    assert bool((lam[1:] > lam[:-1]).all())


def test_output_follows_input_dtype_and_shape():
    sde = SDES["vp"]()
    score = MIXTURE.score_fn(sde)
    x, _ = fast_sample(sde, score, (4, 2), steps=3, generator=gen(0))
    assert x.dtype == torch.get_default_dtype() and x.shape == (4, 2)
    x, _ = fast_sample(sde, score, (4, 2), steps=3, generator=gen(0), dtype=torch.float64)
    assert x.dtype == torch.float64
    x, _ = ddim_sample(sde, score, (4, 2), steps=3, eta=1.0, z=torch.zeros(4, 2, dtype=torch.float64),
                       generator=gen(0))
    assert x.dtype == torch.float64


# ----- bad arguments ------------------------------------------------------------------------------
BAD_FAST = [
    (dict(order=0), "order"), (dict(order=4), "order"), (dict(order=2.0), "order"), (dict(order=True), "order"),
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(skip_type="uniform"), "skip_type"),
    (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"),
    (dict(eps=float("nan")), "eps"), (dict(solver="unipc", unipc_variant="bh3"), "unipc_variant"),
    (dict(solver="uni_pc"), "solver"), (dict(dtype=torch.int64), "dtype"), (dict(shape=(4,)), "shape"),
    (dict(z=torch.zeros(3, 2)), "z"), (dict(z=torch.full((4, 2), float("nan"))), "z"),
]


@pytest.mark.parametrize("kwargs,name", BAD_FAST)
def test_fast_sample_rejects_bad_arguments(kwargs, name):
    sde = SDES["vp"]()
    kwargs = {"shape": (4, 2), **kwargs}
    with pytest.raises(ValueError, match=name):
        fast_sample(sde, MIXTURE.score_fn(sde), **kwargs)


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan"), "1"])
def test_ddim_rejects_bad_eta(eta):
    sde = SDES["vp"]()
    with pytest.raises(ValueError, match=r"eta must be a number in \[0.0, 1.0\], got"):
        ddim_sample(sde, MIXTURE.score_fn(sde), (4, 2), eta=eta)


def test_rejects_bad_score_function():
    sde = SDES["vp"]()
    with pytest.raises(ValueError, match="score_fn must return a tensor shaped like x"):
        fast_sample(sde, lambda x, t: x[:, :1], (4, 2), steps=2)
    with pytest.raises(ValueError, match="score_fn must be callable"):
        fast_sample(sde, None, (4, 2), steps=2)


def test_unknown_skip_type_lists_the_choices():
    sde = SDES["vp"]()
    with pytest.raises(ValueError, match="skip_type must be one of") as info:
        get_time_steps(sde, 10, skip_type="edm")
    assert all(name in str(info.value) for name in SKIP_TYPES)
