"""Time grids fitted to a process and a score: the few-step solver's grid chosen to match a
high-accuracy solution of the probability-flow ODE.

Data-free, like "Align Your Steps" (Sabour et al. 2024) and GITS / DMN-style grid searches: draw latents
from the prior, decode them once with dopri5 at a tight tolerance (the reference), then move the interior
grid points to minimise the mean squared distance, in data space, between ``fast_sample``'s output on
that grid and the reference from the same latents. Only the score is needed (an exact one or a network;
no gradient through it), and the search costs a stated number of score evaluations (``TimeGridFit.nfe``).

The search is coordinate descent on the half log-SNR ``lambda_t`` of the interior points: point ``j``
moves within ``(lambda_{j-1}, lambda_{j+1})`` by a golden-section search over its relative position,
and the move is kept only if it lowers the loss, so the fitted grid is never worse than the start
(``init``, a ``skip_type``) on the fitting latents. The ends stay at ``T`` and ``eps``. ``init`` may also be
several skip types or ``"auto"``: a descent from each, the lowest loss kept (the loss surface has local
minima: on subVP the default start stalls far from the grid a ``logSNR`` start reaches). ``loss="distance"``
(mean, not mean squared, distance) or ``"mmd"`` weigh the few latents near a boundary between modes less;
on the bench's mixture (``bench/samplers.py``, "opt-grid+") the distance loss gives grids closer in MMD^2
to the exact samples than the squared one, which can prefer a grid with a worse sample distribution.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import torch

from scoresde.samplers.fast import SOLVERS, fast_sample
from scoresde.samplers.ode import ode_sample
from scoresde.samplers.schedules import (DEFAULT_SKIP_TYPE, SKIP_TYPES, get_time_steps, half_log_snr,
                                         times_from_half_log_snr)
from scoresde.samplers.solver import check_order
from scoresde.samplers.unipc import DEFAULT_UNIPC_VARIANT
from scoresde.score import ScoreFn, check_eps, check_shape
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice, check_float, check_int

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
# A moved point stays this fraction of its bracket away from its neighbours (no zero-length steps).
MARGIN = 0.02


LOSSES = ("mse", "distance", "mmd")
# init="auto": every spacing, best-first on the measured order-2 ranking (bench/samplers.py).
AUTO_INITS = ("inverse_karras", "logSNR", "time_quadratic", "time_uniform", "karras")
# Gaussian kernel widths of loss="mmd", as fractions of the reference's median pairwise distance.
MMD_WIDTHS = (0.05, 0.15, 0.5)


class TimeGridFit(NamedTuple):
    """What ``optimize_time_grid(..., return_info=True)`` returns besides the grid."""
    times: torch.Tensor        # (steps + 1,), float64, T > ... > eps: pass as fast_sample(times=...)
    loss: float                # the fitting loss (``loss``) against the reference, fitted grid
    initial_loss: float        # the same for the chosen start's grid (the best start's, before descent)
    nfe: int                   # score evaluations spent in all (batched): reference + search
    reference_nfe: int         # of which the dopri5 reference
    solver_runs: int           # fast_sample calls made by the search (each steps + denoise NFE)
    init: str = DEFAULT_SKIP_TYPE  # the start whose descent gave ``times``
    start_losses: Tuple[Tuple[str, float], ...] = ()  # (init, fitted loss) per start, in the order tried


def _inits(init) -> Tuple[str, ...]:
    """``init`` as a tuple of skip types: one name, ``"auto"`` (``AUTO_INITS``) or a non-empty sequence."""
    if isinstance(init, str):
        return AUTO_INITS if init == "auto" else (check_choice("init", init, SKIP_TYPES),)
    try:
        names = tuple(init)
    except TypeError:
        raise ValueError(f"init must be a skip type, 'auto' or a sequence of skip types, got {init!r}")
    if not names:
        raise ValueError("init must name at least one skip type, got an empty sequence")
    return tuple(check_choice("init", name, SKIP_TYPES) for name in names)


def _check_args(sde: SDE, steps, iterations, line_search_evals, n_samples, reference_tol, solver, order, loss):
    check_int("steps", steps, minimum=1)
    check_int("iterations", iterations, minimum=0)
    check_int("line_search_evals", line_search_evals, minimum=2)
    if n_samples is not None:
        check_int("n_samples", n_samples, minimum=1)
    check_float("reference_tol", reference_tol, 0.0, 1.0, open_low=True)
    check_choice("solver", solver, SOLVERS)
    check_choice("loss", loss, LOSSES)
    if solver == "sde-dpmsolver++":
        raise ValueError("solver must be a deterministic ODE solver ('dpmsolver++' or 'unipc') for "
                         "optimize_time_grid, got 'sde-dpmsolver++'")
    check_order(order)


def _gaussian_kernel_mean(a: torch.Tensor, b: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    d2 = torch.cdist(a, b).pow(2).unsqueeze(-1)
    return torch.exp(-d2 / (2 * widths ** 2)).mean()


def _loss_fn(kind: str, reference: torch.Tensor):
    """``x -> loss`` against the reference decode of the same latents: ``"mse"`` the mean squared distance,
    ``"distance"`` the mean distance (less weight on the few latents near a boundary between modes, where
    the flow map is steep), ``"mmd"`` the squared MMD (Gretton et al. 2012; V-statistic) between the two
    sets, Gaussian kernels of widths ``MMD_WIDTHS`` x the reference's median pairwise distance: the
    distribution, not each sample, matched."""
    ref = reference.double().flatten(1)
    if kind == "mse":
        return lambda x: (x.double().flatten(1) - ref).pow(2).sum(1).mean()
    if kind == "distance":
        return lambda x: (x.double().flatten(1) - ref).norm(dim=1).mean()
    widths = torch.cdist(ref, ref).median() * torch.tensor(MMD_WIDTHS, dtype=ref.dtype, device=ref.device)
    k_ref = _gaussian_kernel_mean(ref, ref, widths)

    def mmd(x):
        x = x.double().flatten(1)
        return _gaussian_kernel_mean(x, x, widths) + k_ref - 2 * _gaussian_kernel_mean(x, ref, widths)
    return mmd


def optimize_time_grid(sde: SDE, score_fn: ScoreFn, shape, steps: int, *, order: int = 2,
                       solver: str = "dpmsolver++", n_samples: int | None = None, iterations: int = 4,
                       line_search_evals: int = 8, eps: float = 1e-3, denoise: bool = True,
                       init: str | Sequence[str] = DEFAULT_SKIP_TYPE, reference_tol: float = 1e-6,
                       lower_order_final: bool = True, unipc_variant: str = DEFAULT_UNIPC_VARIANT,
                       loss: str = "mse", warm_start: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, device=None,
                       dtype: torch.dtype | None = None, return_info: bool = False):
    """A ``steps``-step time grid for ``fast_sample`` fitted to ``sde`` and ``score_fn``; returns the
    ``(steps + 1,)`` float64 tensor ``T = t_0 > ... > t_steps = eps`` (with ``return_info``, a
    ``TimeGridFit`` whose ``times`` it is).

    ``shape`` is the sample shape ``(B, ...)``; the fit uses ``n_samples`` latents (default ``B``) drawn
    from the prior with ``generator`` (so the result is deterministic given it), decoded once by dopri5
    at ``rtol = atol = reference_tol``. Then ``iterations`` sweeps of coordinate descent over the interior
    points' half log-SNR (``line_search_evals`` golden-section evaluations per point, each one
    ``fast_sample`` run with ``order``, ``solver``, ``denoise``, ``lower_order_final`` and
    ``unipc_variant`` as given) minimise ``loss`` against the reference (``"mse"``: mean squared
    distance; ``"distance"``: mean distance; ``"mmd"``: squared MMD between the output and reference
    sets; see ``_loss_fn``), starting from the ``init`` grid. ``init`` may be a skip type, a sequence of
    them or ``"auto"`` (``AUTO_INITS``): a multi-start, one descent from each, keeping the lowest loss
    (``TimeGridFit.init`` names the winner). ``warm_start``, a fitted ``(steps - 1)``-step grid with the
    same ends, adds one more start: that grid with a point inserted in the middle (in log-SNR) of the gap
    whose insertion scores best (``steps`` runs to choose), named ``"warm_start"`` (``fit_time_grids``
    chains the step counts this way). Cost: the reference's NFE plus, per start,
    ``1 + iterations * (steps - 1) * line_search_evals`` solver runs of ``steps + denoise`` NFE each,
    every one over the ``n_samples`` latents in one batch (``TimeGridFit.nfe``). Use the grid with the
    same solver settings: ``fast_sample(sde, score_fn, shape, order=order, solver=solver, times=grid)``.
    """
    fit = _fit_chain(sde, score_fn, shape, [steps], warm_start, order, solver, n_samples, iterations,
                     line_search_evals, eps, denoise, init, reference_tol, lower_order_final, unipc_variant, loss,
                     generator, device, dtype)[steps]
    return fit if return_info else fit.times


def fit_time_grids(sde: SDE, score_fn: ScoreFn, shape, steps: Sequence[int], *, order: int = 2,
                   solver: str = "dpmsolver++", n_samples: int | None = None, iterations: int = 4,
                   line_search_evals: int = 8, eps: float = 1e-3, denoise: bool = True,
                   init: str | Sequence[str] = DEFAULT_SKIP_TYPE, reference_tol: float = 1e-6,
                   lower_order_final: bool = True, unipc_variant: str = DEFAULT_UNIPC_VARIANT,
                   loss: str = "mse", generator: torch.Generator | None = None, device=None,
                   dtype: torch.dtype | None = None) -> Dict[int, TimeGridFit]:
    """``optimize_time_grid`` for each step count in ``steps`` (increasing), on one set of latents and one
    reference decode, each fit after the first warm-started from the previous count's grid
    (``warm_start``) when that count is one fewer, so that adding a step starts from the fewer-step optimum instead of only from the
    skip-type grids; independent fits can come out worse with more steps (a 6-step fit above the 5-step
    one). Returns ``{steps: TimeGridFit}``. Each fit's ``nfe`` is the shared reference's NFE plus its own
    runs; the whole cost is ``reference_nfe + sum(solver_runs x (steps + denoise))``."""
    return _fit_chain(sde, score_fn, shape, _step_counts(steps), None, order, solver, n_samples, iterations,
                      line_search_evals, eps, denoise, init, reference_tol, lower_order_final, unipc_variant, loss,
                      generator, device, dtype)


def _fit_chain(sde, score_fn, shape, counts, warm_start, order, solver, n_samples, iterations, line_search_evals,
               eps, denoise, init, reference_tol, lower_order_final, unipc_variant, loss, generator, device,
               dtype) -> Dict[int, TimeGridFit]:
    """The fits for ``counts`` on one set of latents and reference, each warm-started from the one before
    (the first from ``warm_start``, if given) when it has one step fewer."""
    for n in counts:
        _check_args(sde, n, iterations, line_search_evals, n_samples, reference_tol, solver, order, loss)
    setting = _Setting(sde, score_fn, _inits(init), loss, iterations, line_search_evals,
                       dict(order=order, solver=solver, denoise=denoise, lower_order_final=lower_order_final,
                            unipc_variant=unipc_variant))
    z, reference, reference_nfe, eps = _reference(sde, score_fn, shape, n_samples, eps, denoise, reference_tol,
                                                  generator, device, dtype)
    fits, warm = {}, warm_start
    for i, n in enumerate(counts):
        fits[n] = _fit(setting, z, reference, reference_nfe, n, eps, warm if i == 0 or len(warm) == n else None)
        warm = fits[n].times
    return fits


def _step_counts(steps) -> List[int]:
    try:
        counts = [check_int("steps", n, minimum=1) for n in steps]
    except TypeError:
        raise ValueError(f"steps must be an increasing sequence of step counts, got {steps!r}")
    if not counts or any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"steps must be a non-empty increasing sequence of step counts, got {steps!r}")
    return counts


class _Setting(NamedTuple):
    """What a fit needs besides its latents, reference and step count."""
    sde: SDE
    score_fn: ScoreFn
    inits: Tuple[str, ...]
    loss: str
    iterations: int
    line_search_evals: int
    solver_kwargs: dict


def _reference(sde, score_fn, shape, n_samples, eps, denoise, reference_tol, generator, device, dtype):
    """The fitting latents (``n_samples`` of them, or ``shape[0]``) and their dopri5 decode."""
    eps = check_eps(sde, eps)
    shape = check_shape(shape)
    if n_samples is not None:
        shape = (n_samples,) + shape[1:]
    z = sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    reference, reference_nfe = ode_sample(sde, score_fn, shape, rtol=reference_tol, atol=reference_tol, eps=eps,
                                          denoise=denoise, z=z)
    return z, reference, reference_nfe, eps


def _warm_start_lams(sde: SDE, warm_start, steps: int, eps: float) -> List[List[float]]:
    """The ``(steps - 1)``-step grid ``warm_start`` with one point inserted at the log-SNR midpoint of
    each of its gaps: ``steps`` candidate starts of ``steps`` steps."""
    grid = torch.as_tensor(warm_start, dtype=torch.float64).flatten()
    if grid.numel() != steps:
        raise ValueError(f"warm_start must be a ({steps - 1})-step grid of {steps} times for steps={steps}, "
                         f"got {grid.numel()} times")
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    if not torch.allclose(grid[[0, -1]], ends, rtol=1e-9, atol=0) or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"warm_start must decrease from T = {sde.T} to eps = {eps}, got {grid.tolist()}")
    lam = half_log_snr(sde, grid).tolist()
    return [lam[:j + 1] + [(lam[j] + lam[j + 1]) / 2] + lam[j + 1:] for j in range(len(lam) - 1)]


def _fit(setting: _Setting, z, reference, reference_nfe: int, steps: int, eps: float, warm_start) -> TimeGridFit:
    """One descent per start (the skip types, and the best insertion into ``warm_start`` if given)."""
    sde, denoise = setting.sde, setting.solver_kwargs["denoise"]
    loss_fn = _loss_fn(setting.loss, reference)
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    runs = 0

    def loss_of(lams: List[float]) -> float:
        nonlocal runs
        runs += 1
        x, _ = fast_sample(sde, setting.score_fn, z.shape, times=times_from_half_log_snr(sde, lams, ends), z=z,
                           **setting.solver_kwargs)
        value = float(loss_fn(x))
        return value if math.isfinite(value) else math.inf

    names = list(setting.inits)
    starts = [half_log_snr(sde, get_time_steps(sde, steps, eps, name)).tolist() for name in names]
    if warm_start is not None:
        candidates = _warm_start_lams(sde, warm_start, steps, eps)
        starts.append(min(candidates, key=loss_of))
        names.append("warm_start")
    fits = [_descend(loss_of, lam, setting.iterations, setting.line_search_evals) for lam in starts]
    best = min(range(len(names)), key=lambda i: fits[i][1])  # the first of equals
    lam, fitted, initial = fits[best]
    return TimeGridFit(times_from_half_log_snr(sde, lam, ends), fitted, initial,
                       reference_nfe + runs * (steps + int(bool(denoise))), reference_nfe, runs, names[best],
                       tuple((name, fit[1]) for name, fit in zip(names, fits)))


def _descend(loss_of, lam: List[float], iterations: int, evals: int):
    """Coordinate descent from ``lam``: ``iterations`` sweeps of ``_line_search`` over the interior points.
    Returns ``(lam, loss, initial loss)``."""
    initial = best = loss_of(lam)
    for _ in range(iterations):
        for j in range(1, len(lam) - 1):
            lam, best = _line_search(loss_of, lam, j, best, evals)
    return lam, best, initial


def _line_search(loss_of, lam: List[float], j: int, best: float, evals: int):
    """Golden-section search for point ``j`` over its relative position ``s`` in
    ``(lambda_{j-1}, lambda_{j+1})``, in ``[MARGIN, 1 - MARGIN]``; keeps the best point seen if it beats ``best``."""
    lo_lam, hi_lam = lam[j - 1], lam[j + 1]

    def at(s: float) -> List[float]:
        return lam[:j] + [lo_lam + s * (hi_lam - lo_lam)] + lam[j + 1:]

    a, b = MARGIN, 1.0 - MARGIN
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = loss_of(at(c)), loss_of(at(d))
    seen = [(fc, c), (fd, d)]
    for _ in range(evals - 2):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = loss_of(at(c))
            seen.append((fc, c))
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = loss_of(at(d))
            seen.append((fd, d))
    f_new, s_new = min(seen)
    if f_new < best:
        return at(s_new), f_new
    return lam, best
