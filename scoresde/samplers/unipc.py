"""UniPC (Zhao et al. 2023), the unified predictor-corrector of the probability-flow ODE in data-prediction
form (wl-zhao/UniPC's ``multistep_uni_pc_bh_update``): the UniP-``order`` predictor and the UniC corrector,
one order higher at no extra evaluation, with ``B(h)`` from ``variant`` (``"bh1"``: ``h``; ``"bh2"``:
``e^h - 1``).
"""
from __future__ import annotations

import math
from functools import partial
from typing import List

import numpy as np
import torch

from scoresde.samplers.schedules import DEFAULT_SKIP_TYPE, TimeGrid
from scoresde.samplers.solver import check_order, data_prediction, solve, step_order, step_size
from scoresde.score import ScoreFn, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice

UNIPC_VARIANTS = ("bh1", "bh2")
DEFAULT_UNIPC_VARIANT = "bh2"


def _unipc_terms(m: List[torch.Tensor], grid: TimeGrid, i: int, k: int, variant: str):
    """The shared pieces of UniP-k / UniC-k from ``t_i`` to ``t_{i+1}`` (Zhao et al. 2023, UniPC, Alg. 2-3
    in data-prediction form; wl-zhao/UniPC's ``multistep_uni_pc_bh_update``): the DDIM part ``x_ddim``'s
    coefficients, ``B(h)`` (``bh1``: ``B(h) = h``; ``bh2``: ``B(h) = e^h - 1``), the divided differences
    ``D_j = (x0_{i-j} - x0_i) / r_j`` with ``r_j = (lambda_{i-j} - lambda_i) / h`` and the order
    conditions ``R rho = b``, ``R_{nj} = r_j^(n-1)``, ``b_n = n! phi_{n+1}(-h) / B(h)``, ``r_k = 1``."""
    h = step_size(grid, i)
    hh = -h
    rks = [(grid.lam[i - j] - grid.lam[i]) / h for j in range(1, k)] + [1.0]
    diffs = [(m[-1 - j] - m[-1]) / rks[j - 1] for j in range(1, k)]
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, factorial, rows, b = h_phi_1 / hh - 1.0, 1.0, [], []
    for n in range(1, k + 1):
        rows.append([r ** (n - 1) for r in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= n + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    x_ddim = (grid.sigma[i + 1] / grid.sigma[i], -grid.alpha[i + 1] * h_phi_1)  # x_ddim = c0 x + c1 x0_i
    return x_ddim, grid.alpha[i + 1] * b_h, diffs, np.array(rows), np.array(b)


def _combine(terms, x: torch.Tensor, m0: torch.Tensor, rhos, extra: List[torch.Tensor]) -> torch.Tensor:
    (c0, c1), a_bh, diffs, _, _ = terms
    out = c0 * x + c1 * m0
    for rho, d in zip(rhos, diffs + extra):
        out = out - (a_bh * float(rho)) * d
    return out


def _unipc_predict(x: torch.Tensor, m: List[torch.Tensor], grid: TimeGrid, i: int, k: int, variant: str):
    """UniP-k: ``x_{i+1} = x_ddim - alpha B(h) sum_j rho_j D_j`` with ``rho`` from the first ``k - 1``
    order conditions (``rho = ½`` at ``k = 2``)."""
    terms = _unipc_terms(m, grid, i, k, variant)
    _, _, _, rows, b = terms
    rhos = [] if k == 1 else [0.5] if k == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1]).tolist()
    return _combine(terms, x, m[-1], rhos, [])


def _unipc_correct(x: torch.Tensor, m: List[torch.Tensor], m_new: torch.Tensor, grid: TimeGrid, i: int, k: int,
                   variant: str) -> torch.Tensor:
    """UniC-k: the step ``t_i -> t_{i+1}`` again from ``x`` (at ``t_i``), with the data prediction
    ``m_new`` made at the predicted ``x_{i+1}`` as one more node: order ``k + 1`` for no extra evaluation,
    since ``m_new`` is the history of the next step (Zhao et al. 2023, Sec. 3.1)."""
    terms = _unipc_terms(m, grid, i, k, variant)
    _, _, _, rows, b = terms
    rhos = [0.5] if k == 1 else np.linalg.solve(rows, b).tolist()
    return _combine(terms, x, m[-1], rhos, [m_new - m[-1]])


def unipc_loop(score: ScoreFn, x: torch.Tensor, grid: TimeGrid, order: int, lower_order_final: bool,
                variant: str, show: bool) -> torch.Tensor:
    """Multistep UniPC (Zhao et al. 2023, Alg. 3): UniP-k predicts ``x_{i+1}``; the score there gives
    ``x0_{i+1}``, with which UniC corrects ``x_{i+1}`` before the next step. The last step is not
    corrected (its corrector would need one more evaluation)."""
    steps = len(grid.t) - 1
    history: List[torch.Tensor] = []
    previous = None  # (x_i, k) of the step to correct
    for i in progress_iter(range(steps), show, "unipc", total=steps):
        m_i = data_prediction(score, x, grid, i)
        if previous is not None:
            x = _unipc_correct(previous[0], history, m_i, grid, i - 1, previous[1], variant)
        history = (history + [m_i])[-order:]
        k = step_order(i, steps, order, lower_order_final)
        previous = (x, k)
        x = _unipc_predict(x, history, grid, i, k, variant)
    return x


@torch.no_grad()
def unipc_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 10, order: int = 2, eps: float = 1e-3,
                 denoise: bool = True, z: torch.Tensor | None = None, device=None,
                 generator: torch.Generator | None = None, skip_type: str = DEFAULT_SKIP_TYPE,
                 dtype: torch.dtype | None = None, progress: bool = False,
                 lower_order_final: bool = True, thresholding: float | None = None, times=None, *,
                 variant: str = DEFAULT_UNIPC_VARIANT, name: str = "unipc_sample"):
    """Solve the probability-flow ODE from ``T`` to ``eps`` with multistep UniPC of ``order`` 1-3 and
    ``B(h)`` of ``variant``; ``fast_sample(solver="unipc", unipc_variant=variant)``, with the same
    arguments and ``(x, nfe)`` result."""
    order = check_order(order)
    check_choice("unipc_variant", variant, UNIPC_VARIANTS)
    loop = partial(unipc_loop, order=order, lower_order_final=bool(lower_order_final), variant=variant,
                   show=progress)
    return solve(name, loop, sde, score_fn, shape, steps, eps, denoise, z, device, generator, skip_type, dtype,
                 thresholding, times)
