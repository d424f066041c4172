"""Probability-flow ODE sampling and encoding (Song et al. 2021, eq. 13 and App. D).

``dx/dt = f(x, t) - ½ g(t)^2 ∇x log p_t(x)`` shares its marginals with the SDE, so integrating it
from ``T`` to ``eps`` maps prior noise to data (``ode_sample``) and back (``ode_encode``). The solvers
(``METHODS``: adaptive torchdiffeq methods, the Adams predictor-corrector ``"adams"``, fixed-step
methods with ``steps``, SciPy's ``"rk45"``) are those of ``scoresde.integrate``, shared with the
likelihood.
"""
from __future__ import annotations

from typing import Tuple

import torch

from scoresde.integrate import (ADAPTIVE_METHODS, FIXED_METHODS, METHODS, SCIPY_METHODS, check_solver, integrate,
                                probability_flow_drift)
from scoresde.score import CountingScore, ScoreFn, batch_time, check_eps, check_input, initial_noise, tweedie_denoise
from scoresde.sde_lib import SDE

__all__ = ["ode_sample", "ode_encode", "METHODS", "ADAPTIVE_METHODS", "FIXED_METHODS", "SCIPY_METHODS"]


def ode_sample(sde: SDE, score_fn: ScoreFn, shape, method: str = "dopri5", rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-3, denoise: bool = True, z: torch.Tensor | None = None,
               device=None, generator: torch.Generator | None = None, steps: int | None = None,
               progress: bool = False, dtype: torch.dtype | None = None) -> Tuple[torch.Tensor, int]:
    """Integrate the probability-flow ODE from ``T`` (prior noise, or ``z``) to ``eps``; ``(x, nfe)``.

    ``denoise=True`` adds one Tweedie step at ``eps`` (one more score evaluation). ``nfe`` counts every
    score evaluation, rejected adaptive steps included.
    """
    counting = CountingScore(score_fn, "ode_sample")
    eps = check_eps(sde, eps)
    check_solver(method, rtol, atol, steps)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype)
    with torch.no_grad(), counting.guard():
        x = integrate(probability_flow_drift(sde, counting), x, sde.T, eps, method, rtol, atol, steps,
                      progress, desc="ODE sampling")
        if denoise:
            x = tweedie_denoise(sde, counting, x, batch_time(eps, x))
    return x, counting.nfe


def ode_encode(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, method: str = "dopri5", rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-3, steps: int | None = None, progress: bool = False,
               dtype: torch.dtype | None = None) -> Tuple[torch.Tensor, int]:
    """Integrate the probability-flow ODE forwards from ``eps`` (data ``x``) to ``T``: the latent ``z``
    (Song et al. 2021, Sec. 4.3, "uniquely identifiable encoding"); returns ``(z, nfe)``.

    ``ode_sample(..., z=z, denoise=False)`` with the same solver settings inverts it.
    """
    counting = CountingScore(score_fn, "ode_encode")
    eps = check_eps(sde, eps)
    check_solver(method, rtol, atol, steps)
    check_input(x)
    x = x.to(dtype=dtype or x.dtype)
    with torch.no_grad(), counting.guard():
        z = integrate(probability_flow_drift(sde, counting), x, eps, sde.T, method, rtol, atol, steps,
                      progress, desc="ODE encoding")
    return z, counting.nfe
