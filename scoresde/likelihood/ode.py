"""Exact log-likelihoods through the probability-flow ODE, and bits per dimension.

Instantaneous change of variables (Chen et al. 2018, Neural ODEs, Thm. 1; FFJORD, Grathwohl et al.
2019) along the probability-flow ODE ``dx/dt = f~(x, t)`` (Song et al. 2021, eq. 13 and App. D.2,
eq. 39)::

    log p_eps(x(eps)) = log p_T(x(T)) + ∫_eps^T div f~(x(t), t) dt

The state ``[x, ∫ div]`` is integrated from ``eps`` to ``T`` in one solve. With ``scale_state`` (the
default for ``method="adams"``) the state is ``[x / s_t, ∫ (div f~ - D s_t'/s_t)]`` with
``s_t^2 = alpha_t^2 + sigma_t^2``, the scale of the marginal of unit-variance data, and
``D log(s_T / s_eps)`` is added back: the same integral, but the state no longer grows with sigma
(VE's ``x_t ~ sigma_t z`` grows as ``e^{t log(sigma_max / sigma_min)}``, which a polynomial method must
resolve; on VP ``s_t = 1`` and nothing changes).
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch

from scoresde.integrate import check_solver, integrate, time_like
from scoresde.score import CountingScore, ScoreFn, check_eps, check_input
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum, check_choice, check_int

TRACES = ("exact", "gaussian", "rademacher")
# the ODE is integrated in these; half-precision input is integrated in float32
INTEGRATION_DTYPES = (torch.float32, torch.float64)


def log_likelihood(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, trace: str = "exact",
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5, method: str = "dopri5",
                   generator: torch.Generator | None = None, n_probes: int = 1,
                   dtype: torch.dtype | None = None,
                   prior_logp: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   steps: int | None = None, progress: bool = False, scale_state: bool | None = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """``log p_eps(x)`` in nats per sample (shape ``(B,)``), the latent ``z = x(T)`` and the NFE.

    ``trace``: ``"exact"`` takes the divergence by autograd, one vector-Jacobian product per
    dimension from a single score evaluation (for small ``D``); ``"gaussian"`` / ``"rademacher"`` is
    Hutchinson's unbiased estimate ``E[v^T J v]`` (Hutchinson 1989; FFJORD) with ``n_probes`` probes per
    sample drawn once from ``generator`` and held fixed along the trajectory. ``dtype`` (e.g.
    ``torch.float64``) is the integration precision, by default ``x``'s dtype; float16 / bfloat16 input
    is integrated in float32 (half precision cannot resolve the adaptive steps), so ``logp`` and ``z``
    come back in float32 and ``score_fn`` sees float32 ``x``. ``prior_logp`` replaces
    ``sde.prior_logp``, e.g. with a known exact ``log p_T``. Solvers and ``steps`` as in ``ode_sample``;
    ``nfe`` counts score evaluations (one per ODE function evaluation, whatever the trace). A score of
    the wrong shape or a NaN / infinite one raises ``ValueError`` (see ``scoresde.score.CountingScore``).
    ``method="adams"`` (adaptive Adams predictor-corrector, one evaluation per step; the default of the
    configs' ``eval.method``, while this function keeps dopri5, its documented default) is more accurate
    than dopri5 at the same tolerance in fewer evaluations (``bench/likelihood.py``; measured in
    ``docs/likelihoods.md``). ``scale_state`` integrates ``x / s_t`` instead of ``x`` (module
    docstring); ``None`` means on for ``"adams"``, off otherwise.
    """
    counting = CountingScore(score_fn, "log_likelihood")
    check_choice("trace", trace, TRACES)
    check_solver(method, rtol, atol, steps)
    eps = check_eps(sde, eps)
    n_probes = check_int("n_probes", n_probes, minimum=1)
    check_input(x)
    if prior_logp is not None and not callable(prior_logp):
        raise ValueError(f"prior_logp must be callable or None, got {type(prior_logp).__name__}")
    if scale_state is None:
        scale_state = method == "adams"
    if not isinstance(scale_state, bool):
        raise ValueError(f"scale_state must be True, False or None (on for method 'adams'), got {scale_state!r}")
    x = x.detach().to(dtype=integration_dtype(x, dtype))
    probes = None if trace == "exact" else draw_probes(trace, n_probes, x, generator)
    scale = _state_scale(sde) if scale_state else None
    func = _augmented_dynamics(sde, _differentiable(counting), x.shape, probes, scale)
    with torch.no_grad(), counting.guard():
        start = x / _scale_at(scale, eps, x) if scale_state else x
        state = integrate(func, pack(start, x.new_zeros(x.shape[0])), eps, sde.T, method,
                          rtol, atol, steps, progress, desc="likelihood ODE")
    z, delta_logp = unpack(state, x.shape)
    if scale_state:
        s_eps, s_T = _scale_at(scale, eps, x), _scale_at(scale, sde.T, x)
        z = z * s_T
        delta_logp = delta_logp + z[0].numel() * torch.log(s_T / s_eps).reshape(())
    prior = (prior_logp or sde.prior_logp)(z)
    return prior.to(delta_logp.dtype) + delta_logp, z, counting.nfe


def integration_dtype(x: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """``dtype`` if given (float32 or float64), else ``x``'s dtype, float32 for half-precision ``x``."""
    if dtype is None:
        return x.dtype if x.dtype in INTEGRATION_DTYPES else torch.float32
    if dtype not in INTEGRATION_DTYPES:
        raise ValueError(f"dtype must be one of {list(INTEGRATION_DTYPES)} or None (x's dtype, float32 for "
                         f"half-precision x), got {dtype!r}")
    return dtype


def draw_probes(trace: str, n_probes: int, x: torch.Tensor,
                generator: torch.Generator | None) -> torch.Tensor:
    """Hutchinson probes ``(n_probes, *x.shape)`` with ``E[v v^T] = I``: standard normal or ±1."""
    shape = (n_probes,) + tuple(x.shape)
    if trace == "gaussian":
        return torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
    signs = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def pack(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The ODE state ``[x flattened, ∫ div]``; shape ``(B, D + 1)``."""
    return torch.cat([x.reshape(x.shape[0], -1), delta[:, None]], dim=1)


def unpack(state: torch.Tensor, shape) -> Tuple[torch.Tensor, torch.Tensor]:
    return state[:, :-1].reshape(shape), state[:, -1]


def _differentiable(score_fn: ScoreFn) -> ScoreFn:
    """Fail clearly when ``score_fn`` cuts the graph (``no_grad``/``detach``): the divergence needs it."""
    def score(x, t):
        s = score_fn(x, t)
        if x.requires_grad and not s.requires_grad:
            raise ValueError("score_fn must be differentiable in x for log_likelihood "
                             "(no torch.no_grad() or .detach() inside it)")
        return s
    return score


def _state_scale(sde: SDE):
    """``t -> (s_t, s_t' / s_t)`` with ``s_t^2 = alpha_t^2 + sigma_t^2``, each ``(B,)``."""
    def scale(t: torch.Tensor):
        alpha, sigma = sde.marginal_coeffs(t)
        d_alpha, d_sigma = sde.marginal_derivatives(t)
        s2 = alpha ** 2 + sigma ** 2
        return s2.sqrt(), (alpha * d_alpha + sigma * d_sigma) / s2
    return scale


def _scale_at(scale, t: float, x: torch.Tensor) -> torch.Tensor:
    """``s_t`` at one time, broadcastable against ``x``."""
    return append_dims(scale(time_like(x.new_tensor(t), x[:1]))[0], x.ndim)


def _augmented_dynamics(sde: SDE, score_fn: ScoreFn, shape, probes: torch.Tensor | None, scale=None):
    """``d/dt [x, ∫ div] = [f~(x, t), div f~(x, t)]`` with one score evaluation per call; with ``scale``
    (``_state_scale``) the state is ``y = x / s_t``: ``dy/dt = (f~ - (s'/s) x) / s``, ``div - D s'/s``."""
    rsde = sde.reverse(score_fn, probability_flow=True)
    dim = math.prod(shape[1:])

    def func(t, state):
        y, _ = unpack(state, shape)
        tt = time_like(t, y)
        if scale is not None:
            s, dlog_s = (append_dims(c, y.ndim) for c in scale(tt))
        x = y if scale is None else y * s
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            drift = rsde.sde(xg, tt)[0]
            div = (exact_divergence(drift, xg) if probes is None
                   else hutchinson_divergence(drift, xg, probes))
        drift, div = drift.detach(), div.detach()
        if scale is not None:
            drift = (drift - dlog_s * x) / s
            div = div - dim * dlog_s.reshape(-1)
        return pack(drift, div)

    return func


def exact_divergence(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``sum_d d drift_d / d x_d`` per sample: ``D`` backward passes through one forward graph."""
    flat = drift.reshape(drift.shape[0], -1)
    dim = flat.shape[1]
    div = torch.zeros(flat.shape[0], device=x.device, dtype=x.dtype)
    for d in range(dim):
        grad = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=d < dim - 1)[0]
        div = div + grad.reshape(grad.shape[0], -1)[:, d]
    return div


def hutchinson_divergence(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """``mean_p v_p^T (d drift / d x) v_p`` per sample (Hutchinson 1989): one VJP per probe."""
    total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for p in range(probes.shape[0]):
        vjp = torch.autograd.grad(drift, x, grad_outputs=probes[p], retain_graph=p < probes.shape[0] - 1)[0]
        total = total + batch_sum(vjp * probes[p])
    return total / probes.shape[0]
