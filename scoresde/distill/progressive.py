"""Progressive distillation (Salimans & Ho 2022, Alg. 2) on any linear process ``x_t = alpha_t x_0 + sigma_t z``.

A student learns to take one deterministic DDIM step where its teacher takes two: on nested grids (the
student's ``N``-step grid is every other time of the teacher's ``2N``-step grid), from ``z_t`` the teacher
steps ``t -> t' -> t''``; the student's data prediction at ``t`` must be the ``x~`` for which one DDIM step
``t -> t''`` lands on the teacher's ``z_t''``:

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)   (their Alg. 2)

with the truncated-SNR weight ``max(alpha_t^2 / sigma_t^2, 1)`` on ``|x^_theta - x~|^2`` (their Sec. 4). The
student then becomes the teacher with ``N`` steps; ``2^k`` steps reach ``N`` in ``k - log2 N`` rounds.
The student is any ``score_fn`` (a v-prediction network through ``models.get_score_fn(...,
parameterization="v")``, as in the paper); it samples with ``samplers.ddim_sample(..., times=student_times)``.
"""
from __future__ import annotations

import torch

from scoresde.distill.consistency import ode_step
from scoresde.samplers.schedules import check_times
from scoresde.score import ScoreFn
from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, batch_sum


def student_times(teacher_times) -> torch.Tensor:
    """Every other time of the teacher's grid (``T`` first, ``eps`` last); it must have an even number of steps."""
    t = torch.as_tensor(teacher_times, dtype=torch.float64)
    if t.ndim != 1 or (t.numel() - 1) % 2 or t.numel() < 3:
        raise ValueError(f"teacher_times must have an even number >= 2 of steps, got {t.numel() - 1}")
    return t[::2].clone()


def ddim_targets(sde: SDE, teacher: ScoreFn, x: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor,
                 t_next: torch.Tensor) -> torch.Tensor:
    """``x~``: the data prediction at ``t`` whose single DDIM step to ``t_next`` matches the teacher's two
    DDIM steps ``t -> t_mid -> t_next`` from ``x`` (Salimans & Ho 2022, Alg. 2); per-sample times ``(B,)``."""
    with torch.no_grad():
        x_next = ode_step(sde, teacher, ode_step(sde, teacher, x, t, t_mid, "ddim"), t_mid, t_next, "ddim")
    alpha, sigma = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t.to(torch.float64)))
    alpha2, sigma2 = (append_dims(c.to(x.dtype), x.ndim) for c in sde.marginal_coeffs(t_next.to(torch.float64)))
    ratio = sigma2 / sigma
    return (x_next - ratio * x) / (alpha2 - ratio * alpha)


def progressive_loss(sde: SDE, student: ScoreFn, teacher: ScoreFn, x0: torch.Tensor, teacher_times,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample ``max(SNR_t, 1) |x^_student(z_t, t) - x~|^2`` at a student step ``t -> t''`` drawn uniformly,
    ``z_t = alpha_t x0 + sigma_t eps``; ``teacher_times`` is the teacher's grid (``2N + 1`` decreasing times).
    The student's data prediction is Tweedie's ``(z + sigma^2 s) / alpha`` of its score."""
    grid = check_times(sde, teacher_times)
    if (grid.numel() - 1) % 2:
        raise ValueError(f"teacher_times must have an even number of steps, got {grid.numel() - 1}")
    i = 2 * torch.randint(0, (grid.numel() - 1) // 2, (x0.shape[0],), generator=generator)
    t, t_mid, t_next = (grid[i + k].to(x0.dtype) for k in range(3))
    alpha, sigma = (append_dims(c.to(x0.dtype), x0.ndim) for c in sde.marginal_coeffs(t.to(torch.float64)))
    z = alpha * x0 + sigma * torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    goal = ddim_targets(sde, teacher, z, t, t_mid, t_next)
    pred = (z + sigma ** 2 * student(z, t)) / alpha
    weight = (alpha ** 2 / sigma ** 2).clamp(min=1.0).reshape(-1)
    return weight * batch_sum((pred - goal) ** 2)
