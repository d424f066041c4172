"""Set-up shared by every sampler: argument checks, the initial noise, Tweedie's denoising step,
score-evaluation counting and progress bars."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Tuple

import torch
from tqdm.auto import tqdm

from sde_lib import SDE
from sde_lib.utils import append_dims

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CountingScore:
    """Wraps a ``score_fn`` and counts its evaluations (NFE)."""

    def __init__(self, score_fn: ScoreFn):
        if not callable(score_fn):
            raise ValueError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.score_fn(x, t)


def check_eps(sde: SDE, eps: float, name: str = "eps") -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or not 0.0 < eps < sde.T:
        raise ValueError(f"{name} must lie in (0, T) = (0, {sde.T}), got {eps!r}")
    return float(eps)


def check_shape(shape) -> Tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of positive ints like (B, D) or (B, C, H, W), got {shape!r}")
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) with at least 2 positive dims, got {shape!r}")
    return shape


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_tolerance(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite tolerance, got {value!r}")
    return float(value)


def initial_noise(sde: SDE, shape, z: torch.Tensor | None = None, device=None, generator=None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The starting point at ``T``: the given latent ``z`` (checked) or a draw from the prior."""
    shape = check_shape(shape)
    if z is None:
        return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)
    if not torch.is_tensor(z) or tuple(z.shape) != shape:
        raise ValueError(f"z must be a tensor of shape {shape}, got "
                         f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__}")
    if not torch.isfinite(z).all():
        raise ValueError("z contains NaN or infinite values")
    return z.to(device=device or z.device, dtype=dtype or z.dtype)


def batch_time(value: float, x: torch.Tensor) -> torch.Tensor:
    """A ``(B,)`` time tensor on ``x``'s device and dtype."""
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=x.dtype)


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``E[x_0 | x_t] = (x_t + sigma_t^2 score(x_t, t)) / alpha_t`` (Tweedie's formula; Efron 2011)."""
    alpha, sigma = sde.marginal_coeffs(t)
    score = score_fn(x, t)
    return (x + append_dims((sigma ** 2).to(x.dtype), x.ndim) * score) / append_dims(alpha.to(x.dtype), x.ndim)


def progress(iterable: Iterable, enabled: bool, desc: str, total: int | None = None):
    """A tqdm bar when ``enabled``, the plain iterable otherwise."""
    return tqdm(iterable, desc=desc, total=total, leave=False) if enabled else iterable
