"""SDE-DPM-Solver++(1) and (2M) (Lu et al. 2022b, DPM-Solver++; ``"sde-dpmsolver++"`` in
LuChengTHU/dpm-solver, k-diffusion's ``sample_dpmpp_2m_sde``): the reverse SDE in data-prediction form,
on the multistep loop of ``samplers.solver``. Order 1 is DDIM with ``eta = 1``.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Dict, List

import torch

from scoresde.samplers.schedules import DEFAULT_SKIP_TYPE, TimeGrid
from scoresde.samplers.solver import Update, check_order, multistep_loop, solve, step_size
from scoresde.score import ScoreFn
from scoresde.sde_lib import SDE

SDE_ORDERS = (1, 2)


def sde_update(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int,
               generator: torch.Generator | None) -> torch.Tensor:
    """One step of the reverse SDE from ``t_i`` to ``t_{i+1}``:
    ``x_t = (sigma_t/sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) (x0_s + D1/2) + sigma_t sqrt(1 - e^{-2h}) z``
    with ``D1 = (x0_s - x0_prev) / r0`` for 2M (``len(m) == 2``), 0 at order 1."""
    h = step_size(grid, i)
    decay = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
    a = grid.alpha[i + 1] * decay
    x = (grid.sigma[i + 1] / grid.sigma[i] * math.exp(-h)) * x + a * m[-1]
    if len(m) > 1:
        r0 = (grid.lam[i] - grid.lam[i - 1]) / h
        x = x + (0.5 * a / r0) * (m[-1] - m[-2])
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + (grid.sigma[i + 1] * math.sqrt(decay)) * noise


def sde_updates(generator: torch.Generator | None) -> Dict[int, Update]:
    """``dpm_solver.UPDATES``'s counterpart for the reverse SDE, drawing its noise from ``generator``."""
    return {k: (lambda x, m, grid, i, k=k: sde_update(x, m[-k:], grid, i, generator)) for k in SDE_ORDERS}


@torch.no_grad()
def sde_dpm_solver_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 10, order: int = 2,
                          eps: float = 1e-3, denoise: bool = True, z: torch.Tensor | None = None, device=None,
                          generator: torch.Generator | None = None, skip_type: str = DEFAULT_SKIP_TYPE,
                          dtype: torch.dtype | None = None, progress: bool = False,
                          lower_order_final: bool = True, thresholding: float | None = None, times=None, *,
                          name: str = "sde_dpm_solver_sample"):
    """Solve the reverse SDE from ``T`` to ``eps`` with SDE-DPM-Solver++(1) or (2M) (``order`` 1 or 2), its
    noise drawn from ``generator``; ``fast_sample(solver="sde-dpmsolver++")``, with the same arguments
    and ``(x, nfe)`` result."""
    order = check_order(order)
    if order not in SDE_ORDERS:
        raise ValueError(f"order must be one of {list(SDE_ORDERS)} for solver 'sde-dpmsolver++', got {order!r}")
    loop = partial(multistep_loop, order=order, lower_order_final=bool(lower_order_final), show=progress,
                   updates=sde_updates(generator))
    return solve(name, loop, sde, score_fn, shape, steps, eps, denoise, z, device, generator, skip_type, dtype,
                 thresholding, times)
