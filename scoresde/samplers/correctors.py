"""Correctors of the predictor-corrector sampler: score-based MCMC at a fixed time ``t``.

All share one signature, ``update(x, t, generator) -> (x, x_mean)``, running ``n_steps`` MCMC steps
targeting ``p_t``; ``x_mean`` is the last step without its fresh noise. New correctors subclass
``Corrector`` and register with ``@samplers.register_corrector(name)``.
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch

from scoresde.score import ScoreFn, gaussian_like
from scoresde.sde_lib import SDE
from scoresde.utils import Registry, append_dims, check_choice

CORRECTORS: Registry = Registry("corrector")


def register_corrector(name: str):
    """Decorator registering a ``Corrector`` subclass under ``name`` for ``pc_sample(corrector=name)``."""
    return CORRECTORS.register(name)


def per_sample_norm(v: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each sample; shape ``(B,)``."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def finite_mean(v: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
    """Mean of ``v`` over the entries where ``finite`` holds (NaN when none does); no host sync.
    Half precision is summed in float32, as ``torch.mean`` does."""
    acc = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    total = torch.where(finite, v, torch.zeros_like(v)).sum(dtype=acc)
    return (total / finite.sum()).to(v.dtype)


class Corrector(abc.ABC):
    """``n_steps`` MCMC steps at time ``t`` with step sizes set by the signal-to-noise ratio ``snr``."""

    def __init__(self, sde: SDE, score_fn: ScoreFn, snr: float, n_steps: int):
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = n_steps

    @abc.abstractmethod
    def update(self, x: torch.Tensor, t: torch.Tensor,
               generator: torch.Generator | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``n_steps`` MCMC steps at time ``t`` (shape ``(B,)``); returns ``(x, x_mean)``."""


@register_corrector("langevin")
class LangevinCorrector(Corrector):
    """Langevin MCMC ``x + eps s + sqrt(2 eps) z`` with ``eps = 2 alpha (snr ||z|| / ||s||)^2``
    (Song et al. 2021, Alg. 4 and 5).

    ``norm="batch"`` (default, as score_sde) takes the means of ``||z||`` and ``||s||`` over the batch's
    samples with a finite score, so one NaN sample does not poison the others (``pc_sample`` still
    fails on it at the end); ``norm="sample"`` each sample's own, as Alg. 4 reads for one sample.
    Per-sample steps suit only high dimensions where the norms concentrate: in low dimension a sample
    near a critical point of ``p_t`` (``||s|| -> 0``) gets an unbounded step (``E[1/||s||^2]``
    diverges for ``D <= 2``).
    """

    def __init__(self, sde, score_fn, snr, n_steps, norm: str = "batch"):
        super().__init__(sde, score_fn, snr, n_steps)
        self.norm = check_choice("norm", norm, ("batch", "sample"))

    def update(self, x, t, generator=None):
        x_mean = x
        alpha = self.sde.langevin_alpha(t).to(x.dtype)
        for _ in range(self.n_steps):
            score = self.score_fn(x, t)
            noise = gaussian_like(x, generator)
            step = self.step_size(x, t, score, noise, alpha)
            x_mean = x + append_dims(step, x.ndim) * score
            x = x_mean + append_dims((2 * step).sqrt(), x.ndim) * noise
        return x, x_mean

    def step_size(self, x, t, score, noise, alpha) -> torch.Tensor:
        """The Langevin step size ``eps`` per sample (or one for the batch); broadcasts to ``(B,)``."""
        noise_norm, score_norm = per_sample_norm(noise), per_sample_norm(score)
        if self.norm == "batch":
            finite = torch.isfinite(score_norm)
            noise_norm, score_norm = finite_mean(noise_norm, finite), finite_mean(score_norm, finite)
        return 2 * alpha * (self.snr * noise_norm / score_norm) ** 2


@register_corrector("ald")
class AnnealedLangevinCorrector(LangevinCorrector):
    """Annealed Langevin dynamics of NCSN: Langevin steps with ``eps = 2 alpha (snr sigma_t)^2``,
    ``sigma_t`` the perturbation std (Song & Ermon 2019, Alg. 1, in the form of score_sde's
    AnnealedLangevinDynamics)."""

    def step_size(self, x, t, score, noise, alpha):
        _, sigma = self.sde.marginal_coeffs(t)
        return 2 * alpha * (self.snr * sigma.to(x.dtype)) ** 2


@register_corrector("none")
class NoneCorrector(Corrector):
    """No corrector: a predictor-only sampler."""

    def update(self, x, t, generator=None):
        return x, x
