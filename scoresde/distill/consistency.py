"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023; improved training: Song & Dhariwal 2023) on
every linear process ``x_t = alpha_t x_0 + sigma_t z``.

Everything runs through the scaled variable ``x^ = x / alpha_t``, which is ``x_0`` plus noise of level
``sigma^ = sigma_t / alpha_t`` (EDM's general form, Karras et al. 2022, App. B.2). The probability-flow
ODE maps ``x_t`` to a point ``x_eps`` at the smallest time ``eps``; a consistency function learns that
map in one evaluation:

    f(x, t) = alpha_eps [c_skip(t) x / alpha_t + c_out(t) F(c_in(t) x / alpha_t, noise_label(t))],
    c_skip = sigma_data^2 / ((sigma^ - sigma_min)^2 + sigma_data^2),
    c_out  = (sigma^ - sigma_min) sigma_data / sqrt(sigma_data^2 + sigma^^2),
    c_in   = 1 / sqrt(sigma^^2 + sigma_data^2)

(Song et al. 2023, App. C, with their ``t`` read as ``sigma^`` and ``eps`` as ``sigma_min = sigma^(eps)``;
``c_in`` is EDM's), so ``f(x, eps) = x`` exactly: the boundary condition holds by construction.

- ``consistency_grid``: the discretisation ``eps = t_1 < ... < t_N = T``, Karras et al.'s ``rho = 7`` grid
  in ``sigma^`` (Song et al. 2023, Sec. 5 / App. C).
- ``cd_loss``: consistency distillation (Alg. 2): one teacher ODE step ``t_{n+1} -> t_n`` (``ode_step``:
  Heun in ``sigma^`` or DDIM / DPM-Solver-1), target from the EMA network ``theta^-``.
- ``ct_loss``: improved consistency training (Song & Dhariwal 2023): no teacher, the same noise at both
  levels, pseudo-Huber distance with ``c = 0.00054 sqrt(d)``, lognormal level sampling over the grid,
  weights ``1 / (sigma^_{n+1} - sigma^_n)``, the grid size ``N(k)`` doubling from ``s0 = 10`` to ``s1 = 1280``
  (``ct_steps``) and the target network the student itself without gradient (their EMA decay 0).
- ``make_target``: the target network ``theta^-``, an ``ExponentialMovingAverage`` (decay ``mu``).
- ``consistency_sample``: multistep consistency sampling (Song et al. 2023, Alg. 1), ``(x, nfe)``.

Losses return per-sample terms ``(B,)``; every random draw takes ``generator=``.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn as nn

from scoresde.models.ema import ExponentialMovingAverage
from scoresde.samplers.schedules import KARRAS_RHO, karras_sigmas, sigma_times
from scoresde.score import ScoreFn, check_eps, initial_noise
from scoresde.sde_lib import SDE
from scoresde.sde_lib.predictions import SIGMA_DATA
from scoresde.utils import append_dims, batch_sum, check_choice, check_float, check_int, check_positive

ODE_STEPS = ("heun", "ddim")
DISTANCES = ("l2", "pseudo_huber")
# Improved consistency training (Song & Dhariwal 2023, Sec. 3.3-3.5)
CT_S0, CT_S1 = 10, 1280                  # N(k) from s0 to s1 grid intervals
CT_P_MEAN, CT_P_STD = -1.1, 2.0          # lognormal proposal of log sigma^
HUBER_C = 0.00054                        # pseudo-Huber c = 0.00054 sqrt(d)


def scaled_noise(sde: SDE, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_t, sigma^_t = sigma_t / alpha_t)`` in float64, shape of ``t``."""
    alpha, sigma = sde.marginal_coeffs(t.to(torch.float64))
    return alpha, sigma / alpha


class ConsistencyFunction(nn.Module):
    """``f(x, t) = alpha_eps [c_skip x / alpha_t + c_out F(c_in x / alpha_t, noise_label(t))]``, ``f(x, eps) = x``.

    ``net(x, noise_label)`` is any toolkit network (``models``); it sees ``sde.noise_label(t)`` as every
    score network does, so a teacher's weights can initialise it. A class-conditional network is called
    with the class ``cond`` for every sample (``models.null_label(K)``: its unconditional model).
    """

    def __init__(self, net: nn.Module, sde: SDE, *,
                 eps: float = 1e-3,                  # the boundary time: f(x, eps) = x
                 sigma_data: float = SIGMA_DATA,     # the data's standard deviation (c_skip, c_out)
                 cond: int | None = None):           # a class-conditional network's label for every sample
        super().__init__()
        self.net, self.sde, self.cond = net, sde, cond
        self.eps = check_eps(sde, eps)
        self.sigma_data = check_positive("sigma_data", sigma_data)
        alpha_eps, sigma_min = scaled_noise(sde, torch.tensor([self.eps], dtype=torch.float64))
        self.alpha_eps, self.sigma_min = float(alpha_eps), float(sigma_min)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(c_skip alpha_eps / alpha_t, c_out alpha_eps, c_in / alpha_t)``, float64 ``(B,)``: the factors
        of ``x``, of ``F`` and of the network's input. At ``t = eps`` they are exactly ``(1, 0, .)``."""
        alpha, s = scaled_noise(self.sde, t)
        at_eps = (t == torch.tensor(self.eps, dtype=t.dtype)).to(alpha.device)  # eps as t's dtype holds it
        # Song et al. 2023, App. C, in sigma^; the boundary is pinned against the round-off of sigma^(eps)
        delta = torch.where(at_eps, torch.zeros_like(s), s - self.sigma_min)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (delta ** 2 + sd2)
        c_out = delta * self.sigma_data / (sd2 + s ** 2).sqrt()
        ratio = torch.where(at_eps, torch.ones_like(alpha), self.alpha_eps / alpha)
        return c_skip * ratio, c_out * self.alpha_eps, (s ** 2 + sd2).rsqrt() / alpha

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c_x, c_f, c_in = (append_dims(c.to(x.dtype), x.ndim) for c in self.coefficients(t))
        if self.cond is None:
            return c_x * x + c_f * self.net(c_in * x, self.sde.noise_label(t))
        labels = torch.full((x.shape[0],), self.cond, dtype=torch.long, device=x.device)
        return c_x * x + c_f * self.net(c_in * x, self.sde.noise_label(t), labels)


class ConsistencyGrid(NamedTuple):
    """The discretisation ``t_1 = eps < ... < t_N``, ascending, with ``alpha_t`` and ``sigma^_t`` (float64)."""
    t: torch.Tensor
    alpha: torch.Tensor
    sigma_hat: torch.Tensor


def consistency_grid(sde: SDE, n: int, eps: float = 1e-3, sigma_max: float | None = None,
                     rho: float = KARRAS_RHO) -> ConsistencyGrid:
    """``n`` times whose ``sigma^`` are Karras et al.'s grid from ``sigma^(eps)`` to ``sigma_max`` (default
    ``sigma^(T)``): ``(sigma_min^(1/rho) + (i-1)/(n-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``
    (Song et al. 2023, Sec. 5 with Karras et al. 2022, eq. 5)."""
    n, eps = check_int("n", n, 2), check_eps(sde, eps)
    lo = float(scaled_noise(sde, torch.tensor([eps], dtype=torch.float64))[1])
    top = float(scaled_noise(sde, torch.tensor([sde.T], dtype=torch.float64))[1])
    hi = top if sigma_max is None else check_float("sigma_max", sigma_max, lo, top, open_low=True)
    levels = karras_sigmas(n, lo, hi, rho)[:-1][::-1]
    t = sigma_times(sde, levels).clamp(eps, sde.T)
    t[0], t[-1] = eps, (sde.T if sigma_max is None else t[-1])  # the ends exactly
    alpha, s = scaled_noise(sde, t)
    return ConsistencyGrid(t, alpha, s)


# ----- the teacher's ODE step ----------------------------------------------------------------------
def _x0(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor, sde: SDE) -> torch.Tensor:
    """Tweedie's ``E[x_0 | x_t] = (x + sigma^2 s) / alpha``."""
    alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t.to(torch.float64)))
    return (x + sigma ** 2 * score_fn(x, t)) / alpha


def ode_step(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
             solver: str = "heun") -> torch.Tensor:
    """One probability-flow step per sample from ``t_from`` to ``t_to`` (``(B,)`` each).

    ``"ddim"``: DDIM = DPM-Solver-1, ``x_to = (sigma_to / sigma_from) x + (alpha_to - alpha_from sigma_to /
    sigma_from) x0`` (Song, Meng & Ermon 2021, eq. 12; exact for a constant ``x0``), one evaluation.
    ``"heun"``: Heun on ``dx^/dsigma^ = (x^ - D(x^)) / sigma^`` (Karras et al. 2022, Alg. 1; the step Song et
    al. 2023 distil with), two evaluations.
    """
    check_choice("solver", solver, ODE_STEPS)
    a_from, s_from = (append_dims(c.to(x.dtype), x.ndim) for c in scaled_noise(sde, t_from))
    a_to, s_to = (append_dims(c.to(x.dtype), x.ndim) for c in scaled_noise(sde, t_to))
    x0 = _x0(score_fn, x, t_from, sde)
    if solver == "ddim":
        # sigma_to / sigma_from = (a_to s_to) / (a_from s_from)
        keep = a_to * s_to / (a_from * s_from)
        return keep * x + (a_to - a_from * keep) * x0
    x_hat = x / a_from
    d = (x_hat - x0) / s_from
    euler = x_hat + (s_to - s_from) * d
    d_next = (euler - _x0(score_fn, a_to * euler, t_to, sde)) / s_to
    return a_to * (x_hat + (s_to - s_from) * 0.5 * (d + d_next))


# ----- distances -----------------------------------------------------------------------------------
def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """``sqrt(|a - b|^2 + c^2) - c`` per sample (Song & Dhariwal 2023, eq. 12), ``c = 0.00054 sqrt(d)`` by default."""
    d = a[0].numel()
    c = HUBER_C * math.sqrt(d) if c is None else check_positive("c", c)
    return (batch_sum((a - b) ** 2) + c ** 2).sqrt() - c


def distance(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``"l2"``: ``|a - b|^2`` per sample; ``"pseudo_huber"``: as ``pseudo_huber``."""
    if check_choice("distance", kind, DISTANCES) == "l2":
        return batch_sum((a - b) ** 2)
    return pseudo_huber(a, b)


def make_target(model: nn.Module, decay: float = 0.95) -> ExponentialMovingAverage:
    """The target network ``theta^- <- mu theta^- + (1 - mu) theta`` (Song et al. 2023, Alg. 2; ``mu = 0.95``
    for their CD on CIFAR-10), without warm-up; ``update(model)`` after each optimiser step."""
    return ExponentialMovingAverage(model, decay=check_float("decay", decay, 0.0, 1.0), use_num_updates=False)


def _pair(sde: SDE, x0: torch.Tensor, grid: ConsistencyGrid, n: torch.Tensor, z: torch.Tensor):
    """``(t_n, t_{n+1}, x_{t_{n+1}})`` with ``x_t = alpha_t x_0 + sigma_t z``."""
    t_lo, t_hi = grid.t[n], grid.t[n + 1]
    alpha, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in sde.marginal_coeffs(t_hi))
    return t_lo.to(x0.dtype), t_hi.to(x0.dtype), alpha * x0 + sigma * z


def cd_loss(f: ConsistencyFunction, target: nn.Module, score_fn: ScoreFn, x0: torch.Tensor,
            grid: ConsistencyGrid, generator: torch.Generator | None = None, solver: str = "heun",
            distance_kind: str = "l2") -> torch.Tensor:
    """Consistency distillation (Song et al. 2023, Alg. 2 / eq. 7), per sample:
    ``d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^_{t_n}, t_n))`` with ``n ~ U{1..N-1}``, ``x_{t_{n+1}}`` drawn
    from the data ``x0`` and ``x^_{t_n}`` one teacher ODE step back (``ode_step``)."""
    sde = f.sde
    n = torch.randint(0, len(grid.t) - 1, (x0.shape[0],), generator=generator)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t_lo, t_hi, x_hi = _pair(sde, x0, grid, n, z)
    with torch.no_grad():
        x_lo = ode_step(sde, score_fn, x_hi, t_hi, t_lo, solver)
        goal = target(x_lo, t_lo)
    return distance(distance_kind, f(x_hi, t_hi), goal)


def ct_steps(k: int, total: int, s0: int = CT_S0, s1: int = CT_S1) -> int:
    """Grid size ``N(k) = min(s0 2^floor(k / K'), s1) + 1``, ``K' = floor(K / (log2(s1 / s0) + 1))`` at
    iteration ``k`` of ``K = total`` (Song & Dhariwal 2023, Sec. 3.4)."""
    k, total = check_int("k", k, 0), check_int("total", total, 1)
    s0, s1 = check_int("s0", s0, 1), check_int("s1", s1, 1)
    stage = max(total // int(math.log2(s1 / s0) + 1), 1)
    return min(s0 * 2 ** (k // stage), s1) + 1


def lognormal_indices(grid: ConsistencyGrid, batch: int, generator: torch.Generator | None = None,
                      p_mean: float = CT_P_MEAN, p_std: float = CT_P_STD) -> torch.Tensor:
    """``n`` with ``p(n) ∝ erf((ln sigma^_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((ln sigma^_n - P_mean) /
    (sqrt 2 P_std))`` (Song & Dhariwal 2023, Sec. 3.5), the lognormal mass of each interval."""
    cdf = torch.erf((grid.sigma_hat.log() - p_mean) / (math.sqrt(2.0) * p_std))
    return torch.multinomial(cdf[1:] - cdf[:-1], batch, replacement=True, generator=generator)


def ct_loss(f: ConsistencyFunction, x0: torch.Tensor, grid: ConsistencyGrid,
            generator: torch.Generator | None = None, target: nn.Module | None = None) -> torch.Tensor:
    """Improved consistency training, per sample: ``lambda(sigma^_n) d(f(x + sigma_{n+1} z), f^-(x + sigma_n z))``
    with one ``z`` for both levels (on ``x_t = alpha_t x_0 + sigma_t z``), pseudo-Huber ``d``, lognormal ``n``
    and ``lambda = 1 / (sigma^_{n+1} - sigma^_n)``; the target is ``f`` itself without gradient unless given."""
    n = lognormal_indices(grid, x0.shape[0], generator)
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    t_lo, t_hi, x_hi = _pair(f.sde, x0, grid, n, z)
    alpha, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in f.sde.marginal_coeffs(t_lo.to(torch.float64)))
    with torch.no_grad():
        goal = (f if target is None else target)(alpha * x0 + sigma * z, t_lo)
    weight = (1.0 / (grid.sigma_hat[n + 1] - grid.sigma_hat[n])).to(x0.dtype)
    return weight * pseudo_huber(f(x_hi, t_hi), goal)


# ----- sampling ------------------------------------------------------------------------------------
def default_levels(f: ConsistencyFunction, steps: int) -> list:
    """The ``steps - 1`` noise levels ``sigma^`` after the first step: Karras et al.'s ``rho = 7`` grid of
    ``steps`` levels from ``2 sigma_data`` down to ``sigma_min``, without ``sigma_min`` (where the data's
    structure forms; Song et al. 2023 use 0.821 = 1.6 sigma_data for two steps on CIFAR-10)."""
    return karras_sigmas(steps, f.sigma_min, 2.0 * f.sigma_data)[:-2] if steps > 1 else []


@torch.no_grad()
def consistency_sample(sde: SDE, f: ConsistencyFunction, shape, steps: int = 1,
                       levels: Sequence[float] | None = None, z: torch.Tensor | None = None, device=None,
                       generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): ``x = f(x_T, T)`` from the prior, then for
    each level ``sigma^_n`` of ``levels``: ``x^ = x / alpha_eps + sqrt(sigma^_n^2 - sigma_min^2) z``,
    ``x = f(alpha_n x^, t_n)``.

    ``f`` is a ``ConsistencyFunction`` of ``sde``; ``levels`` (``steps - 1`` decreasing ``sigma^`` in
    ``(sigma_min, sigma^(T))``) default to ``default_levels``. ``steps`` evaluations; returns ``(x, nfe)``."""
    steps = check_int("steps", steps, 1)
    levels = default_levels(f, steps) if levels is None else [float(s) for s in levels]
    top = float(scaled_noise(sde, torch.tensor([sde.T], dtype=torch.float64))[1])
    bounds = [top] + levels + [f.sigma_min]
    if len(levels) != steps - 1 or any(b >= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"levels must be steps - 1 = {steps - 1} decreasing noise levels in "
                         f"({f.sigma_min:.4g}, {top:.4g}), got {levels}")
    x = initial_noise(sde, shape, z, device, generator, dtype)
    x = f(x, torch.full((x.shape[0],), sde.T, dtype=x.dtype, device=x.device))
    for t, level in zip(sigma_times(sde, levels).tolist(), levels):
        alpha = float(sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))[0])
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_hat = x / f.alpha_eps + math.sqrt(level ** 2 - f.sigma_min ** 2) * noise
        x = f(alpha * x_hat, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))
    return x, steps
