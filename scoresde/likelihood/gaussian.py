"""Closed-form Gaussian quantities of the bounds: the KL divergence and log-density of isotropic
Gaussians, and the discretised Gaussian log-likelihood of data on ``K`` levels (Ho et al. 2020, eq. 13)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from scoresde.utils import append_dims, batch_sum, check_int


def gaussian_kl(mean1: torch.Tensor, std1: torch.Tensor, mean2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean1, std1^2 I) || N(mean2, std2^2 I))`` per sample (nats, ``(B,)``); stds ``(B,)``, or shaped
    like the means for diagonal covariances (a learned variance)."""
    if std1.ndim == 1 and std2.ndim == 1:
        dim = mean1[0].numel()
        ratio = (std1 / std2) ** 2
        maha = batch_sum((mean1 - mean2) ** 2) / std2 ** 2
        return 0.5 * (dim * (ratio - 1.0 - torch.log(ratio)) + maha)
    std1, std2 = append_dims(std1, mean1.ndim), append_dims(std2, mean1.ndim)
    ratio = ((std1 / std2) ** 2).expand_as(mean1)
    return 0.5 * batch_sum(ratio - 1.0 - torch.log(ratio) + (mean1 - mean2) ** 2 / std2 ** 2)


def gaussian_log_prob(y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log N(y; mean, std^2 I)`` per sample (nats, ``(B,)``); ``std`` has shape ``(B,)`` or that of ``y``."""
    if std.ndim == 1:
        dim = y[0].numel()
        return -0.5 * batch_sum((y - mean) ** 2) / std ** 2 - dim * (torch.log(std) + 0.5 * math.log(2 * math.pi))
    std = append_dims(std, y.ndim).expand_as(y)
    return batch_sum(-0.5 * (y - mean) ** 2 / std ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi))


def _log_normal_interval(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``lo < hi`` (either may be infinite), accurate in both tails:
    above 0 it uses ``Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)``."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    # log(e^log_b - e^log_a) = log_b + log(1 - e^(log_a - log_b)), written without cancellation
    diff = (log_a - log_b).clamp(max=0.0)
    log1mexp = torch.where(diff > -math.log(2.0), torch.log(-torch.expm1(diff)), torch.log1p(-torch.exp(diff)))
    return log_b + log1mexp


def _cell_edges(x: torch.Tensor, num_levels: int, centered: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The dequantisation cell ``[lo, hi)`` in model space of the level ``x`` falls in, outer cells
    extended to ±infinity (``data.datasets``: ``y = (v + u) / K``, ``x = 2y - 1`` if ``centered``)."""
    y = (x + 1.0) / 2.0 if centered else x
    v = torch.floor(y * num_levels).clamp(0, num_levels - 1)
    lo, hi = v / num_levels, (v + 1.0) / num_levels
    if centered:
        lo, hi = 2.0 * lo - 1.0, 2.0 * hi - 1.0
    lo = torch.where(v == 0, torch.full_like(lo, -math.inf), lo)
    hi = torch.where(v == num_levels - 1, torch.full_like(hi, math.inf), hi)
    return lo, hi


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                                        num_levels: int, centered: bool = True) -> torch.Tensor:
    """Per-element ``log P(v)`` of the level ``v`` whose dequantisation cell holds ``x``, under
    ``N(mean, std^2)`` integrated over that cell (Ho et al. 2020, eq. 13; outer cells open-ended).

    ``x`` and ``mean`` are in model space (``[-1, 1]`` if ``centered``, else ``[0, 1]``); ``std`` is a
    number or broadcasts against ``x``. Returns a tensor shaped like ``x``: summed over the ``K`` levels
    ``exp`` of it is 1 for every element.
    """
    check_int("num_levels", num_levels, minimum=2)
    lo, hi = _cell_edges(x, num_levels, centered)
    return _log_normal_interval((lo - mean) / std, (hi - mean) / std)
