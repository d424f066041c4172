"""DDIM (Song, Meng & Ermon 2021) on any linear SDE: the deterministic first-order step in the data-
prediction form of ``samplers.solver`` (``eta = 0``, DPM-Solver++(1)) or, with ``eta > 0``, a share
``eta^2`` of the DDPM posterior variance added at every step.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from scoresde.samplers.schedules import DDIM_SKIP_TYPE, TimeGrid
from scoresde.samplers.solver import data_prediction, first_order_update, solve, step_size
from scoresde.score import ScoreFn, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import check_float


def _ddim_noisy_update(x: torch.Tensor, x0: torch.Tensor, grid: TimeGrid, i: int, eta: float,
                       generator: torch.Generator | None) -> torch.Tensor:
    """DDIM with ``sigma(eta)^2 = eta^2 sigma_t^2 (1 - e^{-2h})`` = ``eta^2`` times the DDPM posterior
    variance (Song, Meng & Ermon 2021, eqs. 12 and 16, in ``(alpha, sigma)`` form):
    ``x_t = alpha_t x0 + sqrt(sigma_t^2 - sigma(eta)^2) eps_hat + sigma(eta) z``."""
    sigma_s, sigma_t, alpha_s, alpha_t = grid.sigma[i], grid.sigma[i + 1], grid.alpha[i], grid.alpha[i + 1]
    noise_std = eta * sigma_t * math.sqrt(-math.expm1(-2.0 * step_size(grid, i)))
    keep = math.sqrt(max(sigma_t ** 2 - noise_std ** 2, 0.0)) / sigma_s  # weight of eps_hat / sigma_s
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return keep * x + (alpha_t - alpha_s * keep) * x0 + noise_std * z


def ddim_loop(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, eta: float,
              generator: torch.Generator | None, show: bool) -> torch.Tensor:
    """DDIM's steps over the grid, one score evaluation each."""
    steps = len(grid.t) - 1
    for i in progress_iter(range(steps), show, "ddim", total=steps):
        x0 = data_prediction(score, x, grid, i)
        x = first_order_update(x, [x0], grid, i) if eta == 0.0 else _ddim_noisy_update(x, x0, grid, i, eta, generator)
    return x


@torch.no_grad()
def ddim_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 50, eta: float = 0.0, eps: float = 1e-3,
                denoise: bool = True, z: torch.Tensor | None = None, device=None,
                generator: torch.Generator | None = None, skip_type: str = DDIM_SKIP_TYPE,
                dtype: torch.dtype | None = None, progress: bool = False, thresholding: float | None = None,
                times=None):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on any linear SDE, ``steps`` score evaluations.

    ``eta = 0`` is the deterministic sampler, identical to ``fast_sample(order=1)`` on the same grid
    (note the defaults differ: DDIM's is ``"time_quadratic"``, see ``DDIM_SKIP_TYPE``);
    ``eta = 1`` adds the DDPM posterior variance at every step (ancestral sampling on the coarse grid).
    The step noise comes from ``generator``; ``nfe = steps + denoise``. ``thresholding`` as in
    ``fast_sample``; ``times`` replaces the grid as there. Returns ``(x, nfe)``.
    """
    eta = check_float("eta", eta, 0.0, 1.0)  # 0: deterministic DDIM, 1: DDPM-like
    loop = partial(ddim_loop, eta=eta, generator=generator, show=progress)
    return solve("ddim_sample", loop, sde, score_fn, shape, steps, eps, denoise, z, device, generator, skip_type,
                 dtype, thresholding, times)
