"""``fast_sample``: one call for the few-step solvers of the probability-flow ODE and the reverse SDE,
dispatching on ``solver`` to DPM-Solver++ (``samplers.dpm_solver``), SDE-DPM-Solver++
(``samplers.sde_dpm_solver``) and UniPC (``samplers.unipc``). They share one signature and one set-up
(``samplers.solver``) and take their grids from ``samplers.schedules``.
"""
from __future__ import annotations

import torch

from scoresde.samplers.dpm_solver import dpm_solver_sample
from scoresde.samplers.schedules import DEFAULT_SKIP_TYPE
from scoresde.samplers.sde_dpm_solver import sde_dpm_solver_sample
from scoresde.samplers.unipc import DEFAULT_UNIPC_VARIANT, UNIPC_VARIANTS, unipc_sample
from scoresde.score import ScoreFn
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice

# solver name -> the solver; the probability-flow ODE (DPM-Solver++, UniPC) or the reverse SDE (SDE-DPM-Solver++)
SOLVER_FNS = {"dpmsolver++": dpm_solver_sample, "sde-dpmsolver++": sde_dpm_solver_sample, "unipc": unipc_sample}
SOLVERS = tuple(SOLVER_FNS)


@torch.no_grad()
def fast_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = 10, order: int = 2, eps: float = 1e-3,
                denoise: bool = True, z: torch.Tensor | None = None, device=None,
                generator: torch.Generator | None = None, skip_type: str = DEFAULT_SKIP_TYPE,
                dtype: torch.dtype | None = None, progress: bool = False,
                lower_order_final: bool = True, thresholding: float | None = None,
                solver: str = "dpmsolver++", times=None, unipc_variant: str = DEFAULT_UNIPC_VARIANT):
    """Solve the probability-flow ODE from ``T`` to ``eps`` with multistep DPM-Solver++ (Lu et al. 2022b, Alg. 2),
    or with the solver named by ``solver`` (``SOLVERS``; each also callable on its own, ``SOLVER_FNS``).

    ``steps`` score evaluations on a ``skip_type`` grid (one of ``SKIP_TYPES``: ``"inverse_karras"``, the
    default and the most accurate measured, ``"logSNR"``, ``"time_uniform"``, ``"time_quadratic"``,
    ``"karras"``). ``order`` 1 is DDIM, 2 and 3 the 2M/3M multistep solvers, warmed up with lower orders
    (so ``steps < order`` runs at order ``steps``) and, when ``lower_order_final`` and ``steps < 15``,
    lowered at the last two steps. ``z`` is the latent at ``T`` (else drawn from the prior with
    ``generator``). With ``denoise`` the result is the data prediction ``E[x_0 | x_eps]`` at ``eps``,
    which costs one more evaluation: ``nfe = steps + denoise``. ``thresholding`` (a fraction in
    ``(0, 1]``, Imagen's 0.995) applies dynamic thresholding to every data prediction, the final one
    included (Saharia et al. 2022; ``samplers.dynamic_thresholding``), for data in ``[-1, 1]``.
    Returns ``(x, nfe)``. ``solver="sde-dpmsolver++"`` solves the reverse SDE instead with
    SDE-DPM-Solver++(1) (= DDIM with ``eta = 1``) or (2M) (``order`` 1 or 2; Lu et al. 2022b), its noise
    drawn from ``generator``. ``times`` (strictly decreasing, in ``[0, T]``) replaces the grid: the solver
    steps from ``times[0]`` to ``times[-1]`` (``steps``, ``eps`` and ``skip_type`` are then unused), e.g. a
    diffusers scheduler's timesteps (``models.diffusers_times``). ``solver="unipc"`` is UniPC (Zhao et al.
    2023): the UniP-``order`` predictor and the UniC corrector, one order higher at no extra evaluation,
    with ``B(h)`` from ``unipc_variant`` (``"bh1"``: ``h``; ``"bh2"``: ``e^h - 1``).
    """
    check_choice("solver", solver, SOLVERS)
    check_choice("unipc_variant", unipc_variant, UNIPC_VARIANTS)
    options = {"variant": unipc_variant} if solver == "unipc" else {}
    return SOLVER_FNS[solver](sde, score_fn, shape, steps, order, eps, denoise, z, device, generator, skip_type,
                              dtype, progress, lower_order_final, thresholding, times, name="fast_sample",
                              **options)
