"""ODE solvers shared by the probability-flow samplers and the exact likelihood, and the
probability-flow drift (Song et al. 2021, eq. 13) they integrate.

Solvers: adaptive ``dopri5`` / ``bosh3`` / ``adaptive_heun`` and fixed-step ``euler`` / ``midpoint`` /
``rk4`` (``steps`` steps) from torchdiffeq, on the input's device and dtype; ``adams``, an adaptive
variable-step Adams predictor-corrector with one function evaluation per step (``_adams_pec``: about
half dopri5's evaluations for the same likelihood accuracy, ``bench/likelihood.py``); ``rk45`` is
SciPy's ``solve_ivp(method="RK45")``, the reference's solver, kept for parity: it is the only path that
round-trips through NumPy (and the CPU) at every function evaluation.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.integrate
import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from scoresde.score import ScoreFn
from scoresde.sde_lib import SDE
from scoresde.utils import check_int, check_positive

ADAPTIVE_METHODS = ("dopri5", "bosh3", "adaptive_heun", "adams")
# Adams predictor-corrector (``_adams_pec``): predictor order and controller limits, chosen on exact
# mixture likelihoods (bench/likelihood.py; measurements in docs/likelihoods.md): order 4 needs the
# fewest evaluations at 1e-3 nats; step ratios above 2 make variable-step Adams unstable once the order
# is up. The controller (Hairer, Nørsett & Wanner, Sec. II.4): a PI step-size rule (exponents
# 1 / (k + 1) on this error, 0.3 / (k + 1) on the last accepted one) and a cut of at least
# ADAMS_REJECT_FACTOR after a rejection, which halve the rejected steps (each a wasted evaluation);
# while the order ramps up from 1 (and no step has been rejected) the step may grow 4x; a last step
# within ADAMS_STRETCH of the end is stretched to it rather than leaving a sliver.
ADAMS_ORDER = 4
ADAMS_FIRST_STEP = 1e-3     # the first step as a fraction of the span (order 1, adapted at once)
ADAMS_SAFETY, ADAMS_MIN_FACTOR, ADAMS_MAX_FACTOR = 0.9, 0.2, 2.0
ADAMS_PI_BETA = 0.3             # PI control: the last accepted error's exponent, times 1 / (k + 1)
ADAMS_REJECT_FACTOR = 0.7       # a rejected step shrinks at least this much
ADAMS_START_MAX_FACTOR = 4.0    # growth limit while the order ramps up, until the first rejection
ADAMS_STRETCH = 0.1             # stretch a last step by up to this fraction to land on t1
FIXED_METHODS = ("euler", "midpoint", "rk4")
SCIPY_METHODS = ("rk45",)
METHODS = ADAPTIVE_METHODS + FIXED_METHODS + SCIPY_METHODS

OdeFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_solver(method: str, rtol: float, atol: float, steps: int | None) -> None:
    """``method`` known; tolerances positive; ``steps`` given (>= 1) exactly for fixed-step methods."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if method in FIXED_METHODS:
        if steps is None:
            raise ValueError(f"steps is required for the fixed-step method {method!r}: an integer >= 1")
        check_int("steps", steps, minimum=1)
    elif steps is not None:
        raise ValueError(f"steps applies only to the fixed-step methods {list(FIXED_METHODS)}, "
                         f"not to {method!r}; got steps={steps!r}")


def probability_flow_drift(sde: SDE, score_fn: ScoreFn) -> OdeFn:
    """``func(t, x)`` with a scalar tensor ``t``: the probability-flow drift (Song et al. 2021, eq. 13)."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def func(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return rsde.sde(x, time_like(t, x))[0]

    return func


def time_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A solver's scalar time as the ``(B,)`` tensor the SDE expects, on ``x``'s device and dtype."""
    return t.reshape(()).to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def integrate(func: OdeFn, y0: torch.Tensor, t0: float, t1: float, method: str = "dopri5",
              rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
              show_progress: bool = False, desc: str = "ODE") -> torch.Tensor:
    """``y(t1)`` for ``dy/dt = func(t, y)``, ``y(t0) = y0``, with the named solver (checked by the caller)."""
    func = _ProgressFn(func, t0, t1, desc) if show_progress else func
    try:
        if method in SCIPY_METHODS:
            return _solve_ivp(func, y0, t0, t1, rtol, atol)
        if method == "adams":
            return _adams_pec(func, y0, t0, t1, rtol, atol)
        if method in FIXED_METHODS:
            grid = torch.linspace(t0, t1, steps + 1, device=y0.device, dtype=y0.dtype)
            return odeint(func, y0, grid, method=method)[-1]
        span = torch.tensor([t0, t1], device=y0.device, dtype=y0.dtype)
        # step_t: land exactly on t1 rather than step past it and interpolate (torchdiffeq's default)
        return odeint(_clamped_time(func, t0, t1), y0, span, method=method, rtol=rtol, atol=atol,
                      options={"step_t": span[1:]})[-1]
    finally:
        if show_progress:
            func.bar.close()


def _lagrange_weights(nodes, a: float, b: float):
    """``w`` with ``∫_a^b P = sum_j w_j f_j`` for the polynomial ``P`` through ``(nodes_j, f_j)``: the
    variable-step Adams coefficients (Hairer, Nørsett & Wanner, Solving ODEs I, Sec. III.5). Host floats."""
    h = b - a
    xs = (np.asarray(nodes, dtype=np.float64) - a) / h            # nodes in units of the step, from a
    k = len(xs)
    moments = np.array([1.0 / (m + 1) for m in range(k)]) * h      # ∫_0^1 s^m ds, times h
    return np.linalg.solve(np.vander(xs, k, increasing=True).T, moments).tolist()


def _adams_pec(func: OdeFn, y0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float,
               order: int = ADAMS_ORDER) -> torch.Tensor:
    """Variable-step Adams-Bashforth predictor (order ``k <= order``, from the last ``k`` derivatives)
    and Adams-Moulton corrector (order ``k + 1``) in PEC mode: one evaluation per step, at the predicted
    point, whose derivative joins the history (Hairer, Nørsett & Wanner, Sec. III.1 and III.5; as
    UniPC's corrector, it raises the order without an evaluation). The step starts at order 1 and
    ``ADAMS_FIRST_STEP`` of the span; ``|corrector - predictor|`` (the predictor's local error)
    in torchdiffeq's RMS norm with ``atol + rtol |y|`` accepts a step or rejects it (one wasted
    evaluation) and sets the next ``h`` by the PI rule ``safety err^(-1 / (k + 1)) err_prev^(0.3 / (k + 1))``
    within the limits above (a faster growth while the order ramps up; Hairer, Nørsett & Wanner, Sec. II.4)."""
    span = t1 - t0
    t, y = t0, y0
    times, derivs = [t0], [func(y0.new_tensor(t0), y0)]
    h = ADAMS_FIRST_STEP * span
    starting = True   # order still ramping up and no step rejected: growth up to ADAMS_START_MAX_FACTOR
    err_prev = 1.0    # the last accepted step's error (PI control)
    while (t1 - t) / span > 1e-12:
        if (t + (1 + ADAMS_STRETCH) * h - t1) / span > 0:
            h = t1 - t
        k = min(order, len(times))
        starting = starting and k < order
        nodes, hist = times[-k:], derivs[-k:]
        pred = y + sum(w * f for w, f in zip(_lagrange_weights(nodes, t, t + h), hist))
        f_pred = func(y0.new_tensor(t + h), pred)
        corr = y + sum(w * f for w, f in zip(_lagrange_weights(nodes + [t + h], t, t + h), hist + [f_pred]))
        scale = atol + rtol * torch.maximum(y.abs(), corr.abs())
        err = float(((corr - pred) / scale).pow(2).mean().sqrt())
        factor = ADAMS_SAFETY * (err + 1e-16) ** (-1.0 / (k + 1))
        if err <= 1.0:
            t, y = t + h, corr
            times, derivs = (times + [t])[-order:], (derivs + [f_pred])[-order:]
            factor *= err_prev ** (ADAMS_PI_BETA / (k + 1))
            err_prev = max(err, 1e-4)
        elif not err > 1.0:  # NaN
            raise RuntimeError(f"adams: non-finite error estimate at t = {t + h:.6g}")
        else:
            starting, factor = False, min(factor, ADAMS_REJECT_FACTOR)
        max_factor = ADAMS_START_MAX_FACTOR if starting else ADAMS_MAX_FACTOR
        h *= min(max_factor, max(ADAMS_MIN_FACTOR, factor))
        if abs(h) < 1e-10 * abs(span):
            raise RuntimeError(f"adams: step size underflow at t = {t:.6g} (h = {h:.3g})")
    return y


def _clamped_time(func: OdeFn, t0: float, t1: float) -> OdeFn:
    """``func`` with its time clamped to ``[t0, t1]``. Only torchdiffeq's initial step-size probe
    evaluates outside the span (at ``t0 + h0``, unclamped); clamping there changes that guess alone."""
    lo, hi = min(t0, t1), max(t0, t1)
    return lambda t, y: func(t.clamp(lo, hi), y)


def _solve_ivp(func: OdeFn, y0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float) -> torch.Tensor:
    """SciPy's RK45 (Dormand-Prince 5(4), as the reference) on the flattened state; NumPy by necessity."""
    shape, device, dtype = y0.shape, y0.device, y0.dtype

    def fun(t, y):
        yt = torch.from_numpy(y).to(device=device, dtype=dtype).reshape(shape)
        return func(torch.tensor(t, device=device, dtype=dtype), yt).detach().cpu().double().numpy().ravel()

    y_init = y0.detach().cpu().double().numpy().ravel()
    sol = scipy.integrate.solve_ivp(fun, (t0, t1), y_init, rtol=rtol, atol=atol, method="RK45")
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp(RK45) failed: {sol.message}")
    return torch.from_numpy(np.ascontiguousarray(sol.y[:, -1])).to(device=device, dtype=dtype).reshape(shape)


class _ProgressFn:
    """Wraps an ODE function so that a tqdm bar shows the fraction of ``[t0, t1]`` covered."""

    def __init__(self, func: OdeFn, t0: float, t1: float, desc: str):
        self.func, self.t0, self.span = func, t0, abs(t1 - t0)
        self.bar = tqdm(total=1000, desc=desc, leave=False)

    def __call__(self, t, y):
        done = int(1000 * min(abs(float(t) - self.t0) / self.span, 1.0))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        return self.func(t, y)
