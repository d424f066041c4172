"""Samplers never return garbage silently: the score's shape and finiteness are checked in every
sampler and in ``log_likelihood``; argument checks (``sde_lib.utils``) and ``check_pc_options``.

Tiny exact scores (a 2-component mixture in 2-D) with few steps: the whole module runs in seconds.
"""
import math
import re
import warnings

import numpy as np
import pytest
import torch

from scoresde import samplers
from scoresde.samplers import (
    check_pc_options, ddim_sample, fast_sample, get_time_steps, log_likelihood, ode_encode, ode_sample, pc_sample,
)
from scoresde.score import CountingScore
from scoresde.samplers.correctors import LangevinCorrector
from scoresde.sde_lib import VPSDE, GaussianMixture
from scoresde.utils import check_choice, check_float, check_int, check_positive

MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [0.05, 0.1])
SDE = VPSDE(N=30)
B = 8


def gen(seed):
    return torch.Generator().manual_seed(seed)


DATA = MIX.sample(B, generator=gen(0))


def exact(x, t):
    return MIX.score_t(SDE, x, t)


def poisoned(value=float("nan"), rows=(0, 2), when=lambda t: t < 0.5):
    """The exact score with ``value`` in ``rows`` at the times where ``when(t)`` holds."""
    def score(x, t):
        s = exact(x, t).clone()
        mask = torch.zeros(x.shape[0], dtype=torch.bool)
        mask[list(rows)] = True
        s[mask & when(t)] = value
        return s
    return score


# name -> call(score_fn); every path that evaluates a score: PC, the three ODE solver families
# (adaptive torchdiffeq, fixed-step torchdiffeq, SciPy RK45), the few-step solvers, the likelihood.
RUNS = {
    "pc_sample": lambda s: pc_sample(SDE, s, (B, 2), generator=gen(1)),
    "ode_sample": lambda s: ode_sample(SDE, s, (B, 2), generator=gen(1)),
    "ode_sample[rk4]": lambda s: ode_sample(SDE, s, (B, 2), method="rk4", steps=8, generator=gen(1)),
    "ode_sample[rk45]": lambda s: ode_sample(SDE, s, (B, 2), method="rk45", generator=gen(1)),
    "ode_encode": lambda s: ode_encode(SDE, s, DATA),
    "fast_sample": lambda s: fast_sample(SDE, s, (B, 2), steps=5, generator=gen(1)),
    "ddim_sample": lambda s: ddim_sample(SDE, s, (B, 2), steps=5, eta=1.0, generator=gen(1)),
    "log_likelihood": lambda s: log_likelihood(SDE, s, DATA),
    "log_likelihood[rk4]": lambda s: log_likelihood(SDE, s, DATA, method="rk4", steps=5),
}
FORWARD = {"ode_encode", "log_likelihood", "log_likelihood[rk4]"}  # integrate from eps up to T


def sampler_name(run):
    return run.split("[")[0]


def first_time(message):
    return float(re.search(r"first at t = (\S+)", message).group(1))


# ----- the score's shape ----------------------------------------------------------------------------
@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("bad,shape", [(lambda x, t: exact(x, t)[:, :1], (B, 1)),   # broadcasts over D
                                       (lambda x, t: exact(x, t)[0], (2,)),          # broadcasts over B
                                       (lambda x, t: exact(x, t).detach().numpy(), "ndarray")])
def test_score_of_the_wrong_shape_is_rejected(run, bad, shape):
    got = re.escape(str(shape))
    with pytest.raises(ValueError, match=rf"^{sampler_name(run)}: score_fn must return a tensor shaped like x "
                                         rf"\({B}, 2\), got {got}$"):
        RUNS[run](bad)


@pytest.mark.parametrize("run", RUNS)
def test_exact_score_passes_the_checks(run):
    out = RUNS[run](exact)
    assert all(torch.isfinite(v).all() for v in out if torch.is_tensor(v))


# ----- non-finite scores ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # SciPy's RK45 on inf
@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_score_names_sampler_time_and_count(run, value):
    when = (lambda t: t > 0.5) if run in FORWARD else (lambda t: t < 0.5)
    with pytest.raises(ValueError, match=rf"^{sampler_name(run)}: score_fn returned NaN or infinite values "
                                         rf"for 2 of {B} samples, first at t = ") as info:
        RUNS[run](poisoned(value, when=when))
    t = first_time(str(info.value))
    assert (0.5 < t <= SDE.T) if run in FORWARD else (0.0 < t < 0.5)


def test_non_finite_time_is_the_first_on_the_grid():
    with pytest.raises(ValueError) as info:
        pc_sample(SDE, poisoned(), (B, 2), generator=gen(1))
    ts = torch.linspace(SDE.T, 1e-3, SDE.N)
    assert f"first at t = {float(ts[ts < 0.5][0]):.6g}" in str(info.value)
    with pytest.raises(ValueError) as info:
        fast_sample(SDE, poisoned(), (B, 2), steps=5, generator=gen(1))
    ts = get_time_steps(SDE, 5).float()
    assert f"first at t = {float(ts[ts < 0.5][0]):.6g}" in str(info.value)


def test_adaptive_solver_failure_is_replaced_by_the_clear_message():
    # dopri5 fails first (a NaN step size gives a NaN time); the solver's error stays as the cause
    with pytest.raises(ValueError, match="ode_sample: score_fn returned NaN") as info:
        ode_sample(SDE, poisoned(), (B, 2), generator=gen(1))
    assert info.value.__cause__ is not None


def test_other_errors_pass_through_the_guard():
    def broken(x, t):
        raise RuntimeError("network exploded")
    with pytest.raises(RuntimeError, match="network exploded"):
        ode_sample(SDE, broken, (B, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_large_finite_scores_are_not_flagged(dtype):
    # the per-sample sums accumulate half precision in float32: 3072 x 6e4 overflows float16, not float32
    x = torch.zeros(3, 3, 32, 32, dtype=dtype)
    big = torch.full_like(x, 6e4)
    counting = CountingScore(lambda x, t: big, "test")
    counting(x, torch.full((3,), 0.5))
    counting.check()
    big[1, 2, 3, 4] = -math.inf
    counting(x, torch.full((3,), 0.25))
    big[2, 0, 0, 0] = math.nan
    counting(x, torch.full((3,), 0.125))
    with pytest.raises(ValueError, match="test: score_fn returned NaN or infinite values for 2 of 3 samples, "
                                         "first at t = 0.25$"):
        counting.check()


def test_nfe_counts_are_unchanged_by_the_checks():
    counter = CountingScore(exact)
    _, nfe = pc_sample(SDE, counter, (B, 2), generator=gen(1))
    assert nfe == counter.nfe == 2 * SDE.N + 1


# ----- one NaN sample does not poison the Langevin corrector's batch ---------------------------------
def test_langevin_batch_norms_skip_non_finite_samples():
    corr = LangevinCorrector(SDE, poisoned(rows=(2,), when=lambda t: t > -1), 0.16, 1)
    x, t = DATA.clone(), torch.full((B,), 0.4)
    score, noise = corr.score_fn(x, t), torch.randn(B, 2, generator=gen(3))
    alpha = SDE.langevin_alpha(t)
    ok = torch.arange(B) != 2
    expected = 2 * alpha * (0.16 * noise[ok].norm(dim=1).mean() / score[ok].norm(dim=1).mean()) ** 2
    torch.testing.assert_close(corr.step_size(x, t, score, noise, alpha), expected)
    out, out_mean = corr.update(x, t, gen(4))
    assert torch.isfinite(out[ok]).all() and torch.isfinite(out_mean[ok]).all()
    assert torch.isnan(out[2]).all()


def test_one_nan_sample_stays_one_in_pc_sample():
    # with batch-averaged norms poisoned, every sample would turn NaN after the first corrector step
    with pytest.raises(ValueError, match=rf"for 1 of {B} samples, first at t = 1\b"):
        pc_sample(SDE, poisoned(rows=(5,), when=lambda t: t > -1), (B, 2), corrector="langevin", generator=gen(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_langevin_numbers_unchanged_when_all_finite(dtype):
    # the finite-only batch mean equals torch.mean when every sample is finite, also in half precision
    # where the 64 score norms (~5000 each) sum past float16's 65504
    corr = LangevinCorrector(SDE, exact, 0.16, 1)
    x, t = torch.randn(64, 3, 8, 8, generator=gen(2)).to(dtype), torch.full((64,), 0.4, dtype=dtype)
    score, noise = 100 * torch.randn(64, 3, 8, 8, generator=gen(5)).to(dtype), torch.randn(64, 3, 8, 8).to(dtype)
    alpha = SDE.langevin_alpha(t).to(dtype)
    norms = lambda v: torch.linalg.vector_norm(v.reshape(64, -1), dim=1)  # noqa: E731
    plain = 2 * alpha * (0.16 * norms(noise).mean() / norms(score).mean()) ** 2
    step = corr.step_size(x, t, score, noise, alpha)
    assert torch.isfinite(step).all() and torch.equal(step, plain)


# ----- log_likelihood's input --------------------------------------------------------------------
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_log_likelihood_integrates_half_precision_in_float32(half):
    x = DATA.to(half)
    logp, z, _ = log_likelihood(SDE, exact, x)
    ref_logp, ref_z, _ = log_likelihood(SDE, exact, x.float())
    assert logp.dtype == z.dtype == torch.float32
    assert torch.equal(logp, ref_logp) and torch.equal(z, ref_z)


@pytest.mark.parametrize("kwargs,message", [
    (dict(x=DATA[:0]), r"x must be a tensor of shape \(B, \.\.\.\) with at least 2 dims and no empty dim, "
                       r"got \(0, 2\)"),
    (dict(x=DATA.long()), "x must be a floating-point tensor, got dtype torch.int64"),
    (dict(x=DATA.bool()), "x must be a floating-point tensor, got dtype torch.bool"),
    (dict(dtype=torch.float16), r"dtype must be one of \[torch.float32, torch.float64\] or None"),
    (dict(score_fn=None), "score_fn must be callable, got NoneType"),
    (dict(score_fn=3.0), "score_fn must be callable, got float"),
])
def test_log_likelihood_bad_input_is_one_line(kwargs, message):
    kwargs = {"score_fn": exact, "x": DATA, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        log_likelihood(SDE, kwargs.pop("score_fn"), kwargs.pop("x"), **kwargs)
    assert "\n" not in str(info.value)


def test_ode_encode_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="x must be a tensor of shape"):
        ode_encode(SDE, exact, DATA[:0])


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("score_fn,kind", [(None, "NoneType"), ("score", "str")])
def test_samplers_reject_a_score_fn_that_is_not_callable(run, score_fn, kind):
    with pytest.raises(ValueError, match=f"^score_fn must be callable, got {kind}$"):
        RUNS[run](score_fn)


# ----- check_pc_options: pc_sample's errors without sampling ---------------------------------------
BAD_PC = [
    dict(predictor="heun"), dict(corrector="hmc"), dict(predictor="none", corrector="none"),
    dict(snr=0.0), dict(snr=float("nan")), dict(snr=True), dict(n_steps=-1), dict(n_steps=1.5),
    dict(n_steps=True), dict(predictor="ancestral_sampling", probability_flow=True),
]


@pytest.mark.parametrize("kwargs", BAD_PC)
def test_check_pc_options_raises_what_pc_sample_raises(kwargs):
    options = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "n_steps": 1,
               "probability_flow": False, **kwargs}
    with pytest.raises(ValueError) as sampled:
        pc_sample(SDE, exact, (B, 2), **options)
    with pytest.raises(ValueError) as checked:
        check_pc_options(**options)
    assert str(checked.value) == str(sampled.value)


def test_check_pc_options_accepts_every_valid_combination():
    for p in samplers.PREDICTORS:
        for c in samplers.CORRECTORS:
            if (p, c) != ("none", "none"):
                check_pc_options(p, c, 0.16, 1, probability_flow=p in ("euler_maruyama", "reverse_diffusion"))


def test_exported_choices():
    assert samplers.TRACES == ("exact", "gaussian", "rademacher")
    assert "rk45" in samplers.ODE_METHODS and "dopri5" in samplers.ODE_METHODS and "rk4" in samplers.ODE_METHODS
    assert samplers.FAST_ORDERS == (1, 2, 3)
    assert "inverse_karras" in samplers.SKIP_TYPES
    for method in samplers.ODE_METHODS:  # every exported method runs
        steps = 2 if method in ("euler", "midpoint", "rk4") else None
        ode_sample(SDE, exact, (2, 2), method=method, steps=steps, rtol=1e-3, atol=1e-3, generator=gen(0))
    for trace in samplers.TRACES:
        log_likelihood(SDE, exact, DATA[:2], trace=trace, method="euler", steps=2, generator=gen(0))
    for order in samplers.FAST_ORDERS:
        fast_sample(SDE, exact, (2, 2), steps=3, order=order, generator=gen(0))
    assert not hasattr(samplers.predictors, "get_predictor") and not hasattr(samplers.correctors, "get_corrector")


# ----- the argument checks ---------------------------------------------------------------------------
def test_check_int():
    assert check_int("n", 3, minimum=1) == 3 and check_int("n", np.int64(0)) == 0
    for bad, message in [(True, "n must be an integer >= 1, got True"), (0, "n must be an integer >= 1, got 0"),
                         (2.0, "n must be an integer >= 1, got 2.0"), ("2", "n must be an integer >= 1, got '2'")]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            check_int("n", bad, minimum=1)
    with pytest.raises(ValueError, match="^n must be an integer, got None$"):
        check_int("n", None)


def test_check_float():
    assert check_float("x", 1) == 1.0 and isinstance(check_float("x", np.float32(0.5), 0.0, 1.0), float)
    assert check_float("x", 0.0, 0.0, 1.0) == 0.0 and check_float("x", 1.0, 0.0, 1.0) == 1.0
    cases = [
        (dict(value=0.0, low=0.0, open_low=True), "x must be a number in (0.0, inf), got 0.0"),
        (dict(value=1.0, high=1.0, open_high=True), "x must be a number in (-inf, 1.0), got 1.0"),
        (dict(value=1.5, low=0.0, high=1.0), "x must be a number in [0.0, 1.0], got 1.5"),
        (dict(value=float("nan")), "x must be a number in (-inf, inf), got nan"),
        (dict(value=math.inf, low=0.0), "x must be a number in [0.0, inf), got inf"),
        (dict(value=True), "x must be a number in (-inf, inf), got True"),
        (dict(value="1"), "x must be a number in (-inf, inf), got '1'"),
        (dict(value=torch.tensor(1.0)), "x must be a number in (-inf, inf), got tensor(1.)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            check_float("x", **kwargs)


def test_check_positive_and_choice_return_the_value():
    assert check_positive("snr", 2) == 2.0 and check_choice("trace", "exact", samplers.TRACES) == "exact"
    with pytest.raises(ValueError, match=r"^snr must be a number in \(0.0, inf\), got -1$"):
        check_positive("snr", -1)


# ----- no host synchronisation per score evaluation (needs a GPU) ------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
def test_score_checks_do_not_synchronise_per_call():
    x = torch.randn(64, 3, 8, 8, device="cuda")
    counting = CountingScore(lambda x, t: -x, "test")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(20):
            t = torch.full((64,), 1.0 - i / 20, device="cuda")
            counting(x, t)
        counting(torch.full_like(x, float("nan")), torch.full((64,), 0.25, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="test: score_fn returned NaN or infinite values for 64 of 64 samples, "
                                         "first at t = 0.25"):
        counting.check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
@pytest.mark.parametrize("sampler", [fast_sample, ddim_sample])
def test_few_step_samplers_synchronise_once_on_cuda(sampler):
    # the only host sync of a whole call is the final check (the grid is computed on the CPU up front)
    def score(x, t):
        alpha, sigma = SDE.marginal_coeffs(t)
        return -x / (alpha ** 2 * 0.25 + sigma ** 2).reshape(-1, 1, 1, 1)

    run = lambda: sampler(SDE, score, (64, 3, 8, 8), steps=10, device="cuda",  # noqa: E731
                          generator=torch.Generator(device="cuda").manual_seed(0))
    run()  # warm-up: lazy CUDA initialisation may synchronise
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert len([w for w in caught if "synchroniz" in str(w.message)]) == 1
