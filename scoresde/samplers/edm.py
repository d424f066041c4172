"""EDM's samplers (Karras et al. 2022): deterministic Heun (Alg. 1) and the stochastic sampler with churn
(Alg. 2), on every linear process through EDM's general formulation.

For ``x_t = alpha_t x_0 + sigma_t z`` the scaled variable ``x^ = x / alpha_t`` is ``x_0`` plus noise of level
``sigma^ = sigma_t / alpha_t = exp(-lambda_t / 2)``, and the probability-flow ODE in it is EDM's
``dx^/dsigma^ = (x^ - D(x^; sigma^)) / sigma^`` (their eq. 4 with ``s(t) = alpha_t``, ``sigma(t) = sigma^``;
App. B.2), with the denoiser ``D = E[x_0 | x_t]`` from the score by Tweedie's formula at the time
``t = lambda^{-1}(-2 ln sigma^)``. The samplers integrate it on EDM's grid (their eq. 5)

    sigma^_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  sigma^_N = 0,

(``schedules.karras_sigmas`` and ``schedules.edm_grid``) with Heun's method and an Euler last step to
``sigma^ = 0``: ``2N - 1`` score evaluations, output the data prediction. On ``EDMSDE`` (``alpha = 1``,
``sigma = t``) this is EDM's sampler exactly.
"""
from __future__ import annotations

import math

import torch

from scoresde.samplers.schedules import KARRAS_RHO, SigmaGrid, edm_grid, scaled_sigma, sigma_range
from scoresde.score import CountingScore, ScoreFn, batch_time, initial_noise, progress_iter
from scoresde.sde_lib import SDE
from scoresde.utils import check_float, check_int, check_positive

# EDM's deterministic settings (Karras et al. 2022, Table 1 and Sec. 3); rho is schedules.KARRAS_RHO
EDM_STEPS = 18
EDM_SIGMA_MAX = 80.0   # EDM's largest scaled noise for every process (Karras et al. 2022, Sec. 3 and Table 1)


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
               sigma_min: float | None = None, sigma_max: float | None = None, rho: float = KARRAS_RHO,
               eps: float = 1e-3, generator: torch.Generator | None = None, device=None,
               z: torch.Tensor | None = None, dtype: torch.dtype | None = None, progress: bool = False):
    """EDM's Heun sampler (Karras et al. 2022, Alg. 1; ``churn = 0``) or its stochastic sampler (Alg. 2:
    ``churn`` = S_churn, ``s_tmin``/``s_tmax`` = S_tmin/S_tmax on the scaled noise level, ``s_noise`` = S_noise)
    on any process; returns ``(x, nfe)`` with ``nfe = 2 steps - 1``.

    ``sigma_min``/``sigma_max`` bound the scaled noise ``sigma_t/alpha_t``. By default ``sigma_min`` is the
    process's at ``eps`` and ``sigma_max`` is the process's at ``T`` capped at EDM's 80 (``EDM_SIGMA_MAX``):
    VP reaches about 150 at ``T``, rectified flow 999 and the cosine chain far more, and steps spent above 80
    move the sample by less than the data's spread over 80 while the rho-grid spends most of its levels
    there. EDM's own setting is 0.002 and 80 on ``EDMSDE(sigma_max=80)`` with ``sigma_min=0.002``. The
    start is ``x^ = sigma_max z / prior_std`` for the latent ``z`` (given, or drawn from the prior with
    ``generator``), i.e. ``z`` itself at ``T`` when ``sigma_max`` is the process's own and
    ``prior_std = sigma_T``.
    The churn noise also comes from ``generator``. The output is the data prediction at ``sigma^ = 0``.
    """
    score = CountingScore(score_fn, "edm_sample")
    steps = check_int("steps", steps, minimum=1)
    rho = check_positive("rho", rho)
    churn, s_tmin, s_tmax, s_noise = _check_churn(churn, s_tmin, s_tmax, s_noise)
    if sigma_max is None:
        sigma_max = min(EDM_SIGMA_MAX, scaled_sigma(sde, sde.T))
    lo, hi = sigma_range(sde, eps, sigma_min, sigma_max)
    grid = edm_grid(sde, steps, lo, hi, rho, churn, s_tmin, s_tmax)
    x = initial_noise(sde, shape, z=z, device=device, generator=generator, dtype=dtype) * (hi / sde.prior_std)
    with score.guard():
        for i in progress_iter(range(steps), progress, "edm", total=steps):
            s_cur, s_up = grid.level[i], grid.raised[i]
            if s_up > s_cur:  # Alg. 2, lines 5-6: raise the noise to sigma^_hat
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + (math.sqrt(s_up ** 2 - s_cur ** 2) * s_noise) * noise
            x = _heun_step(score, x, s_up, grid.level[i + 1], grid)
    return x, score.nfe
