"""EDM's samplers (Karras et al. 2022): deterministic Heun (Alg. 1) and the stochastic sampler with churn
(Alg. 2), on every linear process through EDM's general formulation.

For ``x_t = alpha_t x_0 + sigma_t z`` the scaled variable ``x^ = x / alpha_t`` is ``x_0`` plus noise of level
``sigma^ = sigma_t / alpha_t = exp(-lambda_t / 2)``, and the probability-flow ODE in it is EDM's
``dx^/dsigma^ = (x^ - D(x^; sigma^)) / sigma^`` (their eq. 4 with ``s(t) = alpha_t``, ``sigma(t) = sigma^``;
App. B.2), with the denoiser ``D = E[x_0 | x_t]`` from the score by Tweedie's formula at the time
``t = lambda^{-1}(-2 ln sigma^)``. The samplers integrate it on EDM's grid (their eq. 5)

    sigma^_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  sigma^_N = 0,

with Heun's method and an Euler last step to ``sigma^ = 0``: ``2N - 1`` score evaluations, output the
data prediction. On ``EDMSDE`` (``alpha = 1``, ``sigma = t``) this is EDM's sampler exactly.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple

import torch

from scoresde.samplers.common import CountingScore, ScoreFn, batch_time, check_eps, initial_noise, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import check_float, check_int, check_positive

# EDM's deterministic settings (Karras et al. 2022, Table 1 and Sec. 3)
EDM_STEPS, EDM_RHO = 18, 7.0


class SigmaGrid(NamedTuple):
    """Per step ``i``: the level ``sigma^_i``, the churned level ``sigma^_hat_i >= sigma^_i`` and the next
    level, each with its time and ``(alpha, sigma)`` (Python floats, float64 arithmetic)."""
    level: List[float]      # sigma^_0 .. sigma^_N (the last is 0)
    raised: List[float]     # sigma^_hat_i, i < N
    time: dict              # sigma^ -> (t, alpha_t, sigma_t)


def _scaled_sigma(sde: SDE, t: float) -> float:
    alpha, sigma = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return float(sigma / alpha)


def _time_of(sde: SDE, sigma_hat: List[float]) -> torch.Tensor:
    """``t = lambda^{-1}(-2 ln sigma^)`` (float64)."""
    return sde.inverse_log_snr(-2.0 * torch.tensor(sigma_hat, dtype=torch.float64).log())


def sigma_range(sde: SDE, eps: float, sigma_min: float | None, sigma_max: float | None):
    """``(sigma_min, sigma_max)`` of the scaled noise: by default the process's own range ``[sigma^(eps),
    sigma^(T)]``; given values must map to times in ``(0, T]``."""
    eps = check_eps(sde, eps)
    top = _scaled_sigma(sde, sde.T)
    lo = _scaled_sigma(sde, eps) if sigma_min is None else check_positive("sigma_min", sigma_min)
    hi = top if sigma_max is None else check_positive("sigma_max", sigma_max)
    if hi > top * (1 + 1e-9):
        raise ValueError(f"sigma_max must be <= sigma_T / alpha_T = {top:.6g} (the process's largest noise), got {hi!r}")
    if not lo < hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}")
    if not float(_time_of(sde, [lo])) > 0.0:
        raise ValueError(f"sigma_min must be above sigma_0 / alpha_0 = {_scaled_sigma(sde, 0.0):.6g} "
                         f"(the process's smallest noise), got {lo!r}")
    return min(lo, top), min(hi, top)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = EDM_RHO) -> List[float]:
    """EDM's ``steps`` levels from ``sigma_max`` to ``sigma_min`` and a final 0 (Karras et al. 2022, eq. 5)."""
    if steps == 1:
        return [sigma_max, 0.0]
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    levels = (hi + ramp * (lo - hi)) ** rho
    levels[0], levels[-1] = sigma_max, sigma_min  # pin the ends against round-off
    return levels.tolist() + [0.0]


def _grid(sde: SDE, steps: int, sigma_min: float, sigma_max: float, rho: float, churn: float,
          s_tmin: float, s_tmax: float) -> SigmaGrid:
    """EDM's levels and, with churn, the raised ones ``sigma^ (1 + gamma_i)`` with
    ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_tmin <= sigma^_i <= S_tmax`` (Alg. 2, line 4),
    capped at the process's largest noise (the score is not defined beyond ``T``)."""
    level = karras_sigmas(steps, sigma_min, sigma_max, rho)
    top = _scaled_sigma(sde, sde.T)
    gamma = min(churn / steps, math.sqrt(2.0) - 1.0)
    raised = [min(s * (1.0 + gamma), top) if (gamma > 0 and s_tmin <= s <= s_tmax) else s for s in level[:-1]]
    needed = sorted(set(level[:-1]) | set(raised))
    t = _time_of(sde, needed).clamp(0.0, sde.T)
    alpha, sigma = sde.marginal_coeffs(t)
    return SigmaGrid(level, raised, {s: (ti, a, si) for s, ti, a, si in
                                     zip(needed, t.tolist(), alpha.tolist(), sigma.tolist())})


def _denoise(score: ScoreFn, x_hat: torch.Tensor, sigma_hat: float, grid: SigmaGrid) -> torch.Tensor:
    """``D(x^; sigma^) = E[x_0 | x_t = alpha x^] = (alpha x^ + sigma^2 s(alpha x^, t)) / alpha`` (Tweedie)."""
    t, alpha, sigma = grid.time[sigma_hat]
    x = alpha * x_hat
    return (x + sigma ** 2 * score(x, batch_time(t, x))) / alpha


def _heun_step(score: ScoreFn, x: torch.Tensor, s_cur: float, s_next: float, grid: SigmaGrid) -> torch.Tensor:
    """Euler from ``s_cur`` to ``s_next``, then Heun's correction unless ``s_next = 0`` (Alg. 1, lines 4-8)."""
    d = (x - _denoise(score, x, s_cur, grid)) / s_cur
    x_next = x + (s_next - s_cur) * d
    if s_next == 0.0:
        return x_next
    d_next = (x_next - _denoise(score, x_next, s_next, grid)) / s_next
    return x + (s_next - s_cur) * 0.5 * (d + d_next)


def _check_churn(churn, s_tmin, s_tmax, s_noise):
    churn = check_float("churn", churn, 0.0)
    s_tmin = check_float("s_tmin", s_tmin, 0.0)
    if isinstance(s_tmax, (int, float)) and not isinstance(s_tmax, bool) and s_tmax == math.inf:
        s_tmax = math.inf
    else:
        s_tmax = check_float("s_tmax", s_tmax, 0.0)
    if s_tmax < s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin!r}, s_tmax={s_tmax!r}")
    return churn, s_tmin, s_tmax, check_float("s_noise", s_noise, 0.0)


@torch.no_grad()
def edm_sample(sde: SDE, score_fn: ScoreFn, shape, steps: int = EDM_STEPS, churn: float = 0.0,
               s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
               sigma_min: float | None = None, sigma_max: float | None = None, rho: float = EDM_RHO,
               eps: float = 1e-3, generator: torch.Generator | None = None, device=None,
               z: torch.Tensor | None = None, dtype: torch.dtype | None = None, progress: bool = False):
    """EDM's Heun sampler (Karras et al. 2022, Alg. 1; ``churn = 0``) or its stochastic sampler (Alg. 2:
    ``churn`` = S_churn, ``s_tmin``/``s_tmax`` = S_tmin/S_tmax on the scaled noise level, ``s_noise`` = S_noise)
    on any process; returns ``(x, nfe)`` with ``nfe = 2 steps - 1``.

    ``sigma_min``/``sigma_max`` bound the scaled noise ``sigma_t/alpha_t`` (default: the process's range
    from ``eps`` to ``T``; EDM's 0.002 and 80 on ``EDMSDE(sigma_max=80)`` with ``sigma_min=0.002``). The
    start is ``x^ = sigma_max z / prior_std`` for the latent ``z`` (given, or drawn from the prior with
    ``generator``), i.e. ``z`` itself at ``T`` when ``sigma_max`` is the default and ``prior_std = sigma_T``.
    The churn noise also comes from ``generator``. The output is the data prediction at ``sigma^ = 0``.
    """
    score = CountingScore(score_fn, "edm_sample")
    steps = check_int("steps", steps, minimum=1)
    rho = check_positive("rho", rho)
    churn, s_tmin, s_tmax, s_noise = _check_churn(churn, s_tmin, s_tmax, s_noise)
    lo, hi = sigma_range(sde, eps, sigma_min, sigma_max)
    grid = _grid(sde, steps, lo, hi, rho, churn, s_tmin, s_tmax)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype) * (hi / sde.prior_std)
    with score.guard():
        for i in progress_iter(range(steps), progress, "edm", total=steps):
            s_cur, s_up = grid.level[i], grid.raised[i]
            if s_up > s_cur:  # Alg. 2, lines 5-6: raise the noise to sigma^_hat
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + (math.sqrt(s_up ** 2 - s_cur ** 2) * s_noise) * noise
            x = _heun_step(score, x, s_up, grid.level[i + 1], grid)
    return x, score.nfe
