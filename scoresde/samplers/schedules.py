"""Time and noise-level grids of every sampler, in the style of k-diffusion's ``get_sigmas_*``: each
builder takes the process, the number of steps and the ends, and returns the grid from ``T`` down.

- Few-step solvers (DPM-Solver++, SDE-DPM-Solver++, UniPC, DDIM): ``get_time_steps`` picks a spacing
  by name (``SKIP_TYPES``: ``get_times_logsnr``, ``get_times_uniform``, ``get_times_quadratic``,
  ``get_times_karras``, ``get_times_inverse_karras``; all warps of ``get_times_power`` or of ``t``);
  ``solver_grid`` adds the coefficients ``alpha_t``, ``sigma_t``, ``lambda_t`` the solvers step with,
  or takes explicit ``times`` (e.g. a fitted grid, ``samplers.optimize_time_grid``).
- EDM (``edm_sample``): ``karras_sigmas`` (Karras et al. 2022, eq. 5) on the scaled noise level
  ``sigma^ = sigma_t / alpha_t`` between the bounds of ``sigma_range``; ``edm_grid`` adds the churned
  levels and the times of every level.
- Predictor-corrector (``pc_sample``, ``inpaint``): ``pc_grid``, score_sde's ``linspace(T, eps, N)``.

The solvers work in the half log-SNR ``lambda_t = log(alpha_t / sigma_t) = ½ sde.log_snr(t)``
(``half_log_snr``); grids are built in float64 on the CPU, except ``pc_grid``, which lives on the
sampler's device.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Sequence, Tuple

import torch

from scoresde.score import check_eps
from scoresde.sde_lib import SDE
from scoresde.utils import check_choice, check_int, check_positive

# EDM's rho (Karras et al. 2022, eq. 5): the warp of their noise levels, and of the "karras" time spacings.
KARRAS_RHO = 7.0
# Measured on exact mixture scores (bench/samplers.py; numbers in its docstring): at 10-20 steps of
# order 2-3 "inverse_karras" is the most accurate grid. For DDIM "time_quadratic" is within 10% of the
# best (time_uniform) at eta = 0 and has the smallest bias at eta = 1 on VP and subVP.
DEFAULT_SKIP_TYPE = "inverse_karras"
DDIM_SKIP_TYPE = "time_quadratic"


def half_log_snr(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """``lambda_t = log(alpha_t / sigma_t) = ½ log SNR(t)``."""
    return 0.5 * sde.log_snr(t)


# ----- time spacings of the few-step solvers ------------------------------------------------------
def get_times_logsnr(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``lambda`` (Lu et al. 2022a, DPM-Solver, Sec. 3.3)."""
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    lam_T, lam_0 = half_log_snr(sde, ends).tolist()
    return sde.inverse_log_snr(2.0 * torch.linspace(lam_T, lam_0, steps + 1, dtype=torch.float64))


def get_times_uniform(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``t`` (DDIM's "uniform" skip)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def get_times_quadratic(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``sqrt(t)`` (DDIM's "quadratic" sub-sequence; Song, Meng & Ermon 2021, App. D)."""
    return torch.linspace(math.sqrt(sde.T), math.sqrt(eps), steps + 1, dtype=torch.float64) ** 2


def get_times_power(sde: SDE, steps: int, eps: float, power: float) -> torch.Tensor:
    """Uniform in ``exp(power * lambda_t) = (alpha_t / sigma_t)^power``."""
    ends = torch.tensor([sde.T, eps], dtype=torch.float64)
    u_T, u_0 = (power * half_log_snr(sde, ends)).exp().tolist()
    ramp = torch.linspace(u_T, u_0, steps + 1, dtype=torch.float64)
    return sde.inverse_log_snr(2.0 / power * ramp.log())


def get_times_karras(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """Uniform in ``(sigma_t / alpha_t)^(1/rho)`` (Karras et al. 2022, EDM, eq. 5): relative to
    ``logSNR``, shorter steps at high noise and longer ones near ``eps``."""
    return get_times_power(sde, steps, eps, -1.0 / KARRAS_RHO)


def get_times_inverse_karras(sde: SDE, steps: int, eps: float) -> torch.Tensor:
    """EDM's warp mirrored, uniform in ``(alpha_t / sigma_t)^(1/rho)``: relative to ``logSNR``, longer
    steps at high noise and shorter ones near ``eps``, where mixture-like data change fastest."""
    return get_times_power(sde, steps, eps, 1.0 / KARRAS_RHO)


SPACINGS: Dict[str, Callable[[SDE, int, float], torch.Tensor]] = {
    "logSNR": get_times_logsnr,
    "time_uniform": get_times_uniform,
    "time_quadratic": get_times_quadratic,
    "karras": get_times_karras,
    "inverse_karras": get_times_inverse_karras,
}
SKIP_TYPES = tuple(SPACINGS)


def get_time_steps(sde: SDE, steps: int, eps: float = 1e-3, skip_type: str = DEFAULT_SKIP_TYPE) -> torch.Tensor:
    """The ``steps + 1`` solver times from ``T`` down to ``eps`` (float64, CPU, strictly decreasing)."""
    check_int("steps", steps, minimum=1)
    eps = check_eps(sde, eps)
    check_choice("skip_type", skip_type, SKIP_TYPES)
    t = SPACINGS[skip_type](sde, steps, eps)
    t[0], t[-1] = sde.T, eps  # pin the ends against round-off of inverse_log_snr
    return t


def check_times(sde: SDE, times) -> torch.Tensor:
    """``times`` as a float64 CPU tensor: at least 2 strictly decreasing times in ``[0, T]``."""
    try:
        t = torch.as_tensor(times, dtype=torch.float64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"times must be a 1-D sequence of floats, got {type(times).__name__}")
    if t.numel() < 2 or not bool((t[1:] < t[:-1]).all()) or not (0.0 <= float(t[-1]) and float(t[0]) <= sde.T):
        raise ValueError(f"times must be at least 2 strictly decreasing times in [0, T] = [0, {sde.T}], got {t.tolist()}")
    return t


def times_from_half_log_snr(sde: SDE, lam: Sequence[float], ends: torch.Tensor) -> torch.Tensor:
    """The times of half log-SNRs ``lam`` (float64), with the ends pinned to ``ends = (T, eps)``."""
    t = sde.inverse_log_snr(2.0 * torch.tensor(lam, dtype=torch.float64))
    t[0], t[-1] = ends[0], ends[-1]
    return t


class TimeGrid(NamedTuple):
    """A few-step solver's grid ``t_0 = T > ... > t_steps = eps`` with its coefficients, as Python floats
    (computed once in float64, so the loop needs no device tensors or host syncs)."""
    t: List[float]
    alpha: List[float]
    sigma: List[float]
    lam: List[float]  # lambda_t = log(alpha_t / sigma_t)


def solver_grid(sde: SDE, steps: int, eps: float, skip_type: str, times=None) -> TimeGrid:
    """The ``skip_type`` grid of ``steps`` steps from ``T`` to ``eps``, or the explicit ``times``, with
    its coefficients; its log-SNR must increase strictly."""
    t = get_time_steps(sde, steps, eps, skip_type) if times is None else check_times(sde, times)
    alpha, sigma = sde.marginal_coeffs(t)
    lam = half_log_snr(sde, t)
    if not bool((lam[1:] > lam[:-1]).all() and torch.isfinite(lam).all()):
        if times is not None:
            raise ValueError(f"times must have strictly increasing finite log-SNR, got times {t.tolist()}")
        raise ValueError(f"steps={steps} is too many for eps={eps}: the {skip_type!r} grid repeats a log-SNR")
    return TimeGrid(t.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist())


# ----- EDM's noise levels -------------------------------------------------------------------------
def scaled_sigma(sde: SDE, t: float) -> float:
    """``sigma^ = sigma_t / alpha_t``, EDM's noise level of the scaled variable ``x / alpha_t``."""
    alpha, sigma = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return float(sigma / alpha)


def sigma_times(sde: SDE, sigma_hat: Sequence[float]) -> torch.Tensor:
    """``t = lambda^{-1}(-2 ln sigma^)``, the times of scaled noise levels (float64)."""
    return sde.inverse_log_snr(-2.0 * torch.tensor(sigma_hat, dtype=torch.float64).log())


def sigma_range(sde: SDE, eps: float, sigma_min: float | None, sigma_max: float | None):
    """``(sigma_min, sigma_max)`` of the scaled noise: by default the process's own range ``[sigma^(eps),
    sigma^(T)]``; given values must map to times in ``(0, T]``."""
    eps = check_eps(sde, eps)
    top = scaled_sigma(sde, sde.T)
    lo = scaled_sigma(sde, eps) if sigma_min is None else check_positive("sigma_min", sigma_min)
    hi = top if sigma_max is None else check_positive("sigma_max", sigma_max)
    if hi > top * (1 + 1e-9):
        raise ValueError(f"sigma_max must be <= sigma_T / alpha_T = {top:.6g} (the process's largest noise), got {hi!r}")
    if not lo < hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={lo!r}, sigma_max={hi!r}")
    if not float(sigma_times(sde, [lo])) > 0.0:
        raise ValueError(f"sigma_min must be above sigma_0 / alpha_0 = {scaled_sigma(sde, 0.0):.6g} "
                         f"(the process's smallest noise), got {lo!r}")
    return min(lo, top), min(hi, top)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> List[float]:
    """EDM's ``steps`` levels from ``sigma_max`` to ``sigma_min`` and a final 0 (Karras et al. 2022, eq. 5)."""
    if steps == 1:
        return [sigma_max, 0.0]
    ramp = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    levels = (hi + ramp * (lo - hi)) ** rho
    levels[0], levels[-1] = sigma_max, sigma_min  # pin the ends against round-off
    return levels.tolist() + [0.0]


class SigmaGrid(NamedTuple):
    """Per step ``i``: the level ``sigma^_i``, the churned level ``sigma^_hat_i >= sigma^_i`` and the next
    level, each with its time and ``(alpha, sigma)`` (Python floats, float64 arithmetic)."""
    level: List[float]      # sigma^_0 .. sigma^_N (the last is 0)
    raised: List[float]     # sigma^_hat_i, i < N
    time: dict              # sigma^ -> (t, alpha_t, sigma_t)


def edm_grid(sde: SDE, steps: int, sigma_min: float, sigma_max: float, rho: float, churn: float,
             s_tmin: float, s_tmax: float) -> SigmaGrid:
    """EDM's levels and, with churn, the raised ones ``sigma^ (1 + gamma_i)`` with
    ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_tmin <= sigma^_i <= S_tmax`` (Karras et al.
    2022, Alg. 2, line 4), capped at the process's largest noise (the score is not defined beyond ``T``)."""
    level = karras_sigmas(steps, sigma_min, sigma_max, rho)
    top = scaled_sigma(sde, sde.T)
    gamma = min(churn / steps, math.sqrt(2.0) - 1.0)
    raised = [min(s * (1.0 + gamma), top) if (gamma > 0 and s_tmin <= s <= s_tmax) else s for s in level[:-1]]
    needed = sorted(set(level[:-1]) | set(raised))
    t = sigma_times(sde, needed).clamp(0.0, sde.T)
    alpha, sigma = sde.marginal_coeffs(t)
    return SigmaGrid(level, raised, {s: (ti, a, si) for s, ti, a, si in
                                     zip(needed, t.tolist(), alpha.tolist(), sigma.tolist())})


# ----- the predictor-corrector grid ---------------------------------------------------------------
def pc_grid(sde: SDE, eps: float, x: torch.Tensor) -> Tuple[torch.Tensor, float]:
    """The ``N`` times ``linspace(T, eps, N)`` on ``x``'s device/dtype and the step ``dt < 0``.

    As in score_sde, every step has the grid's size ``dt = -(T - eps) / (N - 1)`` (score_sde: ``-1/N``,
    the same for its defaults ``eps = 1e-3``, ``N = 1000``), so the last step, taken at ``eps``, carries
    the state to about ``0``; the discrete predictors likewise end on the chain's clean level.
    """
    ts = torch.linspace(sde.T, eps, sde.N, device=x.device, dtype=x.dtype)
    return ts, -(sde.T - eps) / max(sde.N - 1, 1)
