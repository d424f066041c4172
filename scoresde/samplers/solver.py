"""What the few-step solvers share (DPM-Solver++, SDE-DPM-Solver++, UniPC, DDIM): one set-up and finish
(``solve``), the data prediction on a grid, the first-order step, the order schedule and the multistep loop.

All of them work in the half log-SNR ``lambda_t = log(alpha_t / sigma_t)`` with the data prediction
``x0(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t``, in which the probability-flow ODE of any linear SDE
(VP, sub-VP, VE, cosine-VP) has the exact solution (Lu et al. 2022b, "DPM-Solver++", Sec. 4)

    x_t = (sigma_t / sigma_s) x_s + sigma_t ∫_{lambda_s}^{lambda_t} e^lambda x0(x_lambda, lambda) dlambda,

so only ``marginal_coeffs``, ``log_snr`` and ``inverse_log_snr`` of the SDE are needed.

The solvers that ``fast_sample`` dispatches to (``dpm_solver_sample``, ``sde_dpm_solver_sample``,
``unipc_sample``) share one signature::

    (sde, score_fn, shape, steps=10, order=2, eps=1e-3, denoise=True, z=None, device=None, generator=None,
     skip_type=DEFAULT_SKIP_TYPE, dtype=None, progress=False, lower_order_final=True, thresholding=None,
     times=None, *, name=<the function's name>) -> (x, nfe)

(UniPC adds its keyword ``variant``); ``name`` is the sampler that error messages name. Each checks its
own options and hands ``solve`` a loop ``loop(score, x, grid) -> x``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch

from scoresde.samplers.guidance import dynamic_thresholding
from scoresde.samplers.schedules import TimeGrid, solver_grid
from scoresde.score import CountingScore, ScoreFn, batch_time, initial_noise, progress_iter, tweedie_denoise
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice

ORDERS = (1, 2, 3)
# Lu et al. 2022b (DPM-Solver++) and their `lower_order_final`: lower orders at the final steps
# stabilise runs of fewer than 15 steps.
LOWER_ORDER_FINAL_BELOW = 15

# A solver's steps over the whole grid: (counting score, x_T, grid) -> x at the grid's last time.
Loop = Callable[[CountingScore, torch.Tensor, TimeGrid], torch.Tensor]
# One step of a multistep solver: (x_i, the last data predictions, grid, i) -> x_{i+1}.
Update = Callable[[torch.Tensor, List[torch.Tensor], TimeGrid, int], torch.Tensor]


# ----- one step ----------------------------------------------------------------------------------
def data_prediction(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, i: int) -> torch.Tensor:
    """``x0 = (x + sigma^2 score) / alpha`` at grid point ``i`` (Tweedie's formula; DPM-Solver++'s data prediction)."""
    s = score(x, batch_time(grid.t[i], x))
    return (x + grid.sigma[i] ** 2 * s) / grid.alpha[i]


def step_size(grid: TimeGrid, i: int) -> float:
    """``h = lambda_{i+1} - lambda_i > 0``."""
    return grid.lam[i + 1] - grid.lam[i]


def first_order_update(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int) -> torch.Tensor:
    """DPM-Solver++(1) = DDIM: ``x_t = (sigma_t/sigma_s) x_s - alpha_t expm1(-h) x0_s`` (Lu et al. 2022b, Sec. 4)."""
    phi_1 = math.expm1(-step_size(grid, i))
    return (grid.sigma[i + 1] / grid.sigma[i]) * x - (grid.alpha[i + 1] * phi_1) * m[-1]


def step_order(i: int, steps: int, order: int, lower_order_final: bool) -> int:
    """Order of step ``i``: warm up with the predictions available (``i + 1``); with few steps drop to
    order 1 at the last step and 2 at the one before (Lu et al. 2022b's ``lower_order_final``)."""
    k = min(order, i + 1)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        k = min(k, steps - i)
    return k


def multistep_loop(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, order: int, lower_order_final: bool,
                   show: bool, updates: Dict[int, Update]) -> torch.Tensor:
    """The multistep loop of DPM-Solver++ (Lu et al. 2022b, Alg. 2): one score evaluation per step, the last
    ``order`` data predictions kept; ``updates`` maps an order to its step (``dpm_solver.UPDATES`` for the
    ODE, ``sde_dpm_solver.sde_updates`` for the reverse SDE)."""
    steps = len(grid.t) - 1
    history: List[torch.Tensor] = []
    for i in progress_iter(range(steps), show, "dpm-solver++", total=steps):
        history = (history + [data_prediction(score, x, grid, i)])[-order:]
        x = updates[step_order(i, steps, order, lower_order_final)](x, history, grid, i)
    return x


# ----- argument checks ---------------------------------------------------------------------------
def check_order(order) -> int:
    """``order`` one of ``ORDERS``, an ``int`` (not ``True``, not ``2.0``)."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise ValueError(f"order must be one of {list(ORDERS)}, got {order!r}")
    return check_choice("order", order, ORDERS)


def _check_dtype(dtype) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")


# ----- set-up and finish -------------------------------------------------------------------------
def solve(name: str, loop: Loop, sde: SDE, score_fn: ScoreFn, shape, steps: int, eps: float, denoise: bool,
          z: torch.Tensor | None, device, generator: torch.Generator | None, skip_type: str,
          dtype: torch.dtype | None, thresholding: float | None, times) -> tuple:
    """Run ``loop`` from ``x_T`` over the grid; returns ``(x, nfe)``.

    Set-up: with ``thresholding`` the score of the dynamically thresholded data prediction
    (``samplers.dynamic_thresholding``), the counting score (named ``name`` in its errors), the dtype
    check, the grid (``schedules.solver_grid``: ``skip_type`` or ``times``) and ``x_T`` (``z`` or a prior
    draw from ``generator``). Finish: with ``denoise`` the data prediction at the grid's last time (one
    more score evaluation), then the one check (one host sync) that no score was NaN or infinite."""
    if thresholding is not None:
        score_fn = dynamic_thresholding(sde, score_fn, thresholding)
    score = CountingScore(score_fn, name)
    _check_dtype(dtype)
    grid = solver_grid(sde, steps, eps, skip_type, times)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype)
    x = loop(score, x, grid)
    if denoise:
        x = tweedie_denoise(sde, score, x, batch_time(grid.t[-1], x))
    score.check()
    return x, score.nfe
