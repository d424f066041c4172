"""Bits per dimension from a log-likelihood or a bound on one, in nats (Theis et al. 2016 for
dequantised data)."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from scoresde.utils import check_int


def bits_per_dim(logp: torch.Tensor, dim: int, num_levels: int = 256, centered: bool = False,
                 log_det: float | None = None) -> torch.Tensor:
    """Bits per dimension of ``K = num_levels``-level data from the model's ``log p(x)`` (nats).

    The data ``v`` are dequantised to ``y = (v + u) / K`` in ``[0, 1]^D`` and scaled to the model's
    ``x = 2y - 1`` (``centered``) or ``x = y``; with ``log_det = log|det dx/dy|`` (``D log 2`` or 0,
    or pass it explicitly for another scaler), ``log p(y) = log p(x) + log_det`` and the discrete
    ``log P(v) >= log p(y) - D log K`` (Theis et al. 2016), so::

        bpd = -(log p(x) + log_det - D log K) / (D log 2)

    For ``K = 256`` this is score_sde's ``-log p(x) / (D ln 2) + 7`` (centered) or ``+ 8``.
    """
    check_int("dim", dim, minimum=1)
    check_int("num_levels", num_levels, minimum=2)
    if log_det is None:
        log_det = dim * math.log(2.0) if centered else 0.0
    elif centered:
        raise ValueError("pass either centered=True or log_det, not both")
    return -(logp + log_det - dim * math.log(num_levels)) / (dim * math.log(2.0))


def bits_per_dim_bound(logp: torch.Tensor, stderr: torch.Tensor, dim: int, *, num_levels: int | None = None,
                       centered: bool = False, log_det: float | None = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """A log-likelihood bound (nats) and its standard error in bits/dim (an upper bound on bits/dim).

    ``num_levels=None``: ``logp`` is already a log-probability of the discrete data (``ddpm_vlb`` and
    ``iw_bound`` with a discretised decoder), ``bpd = -logp / (D ln 2)``. ``num_levels=K``: ``logp``
    bounds the density at uniformly dequantised model-space points (``elbo``, like
    ``log_likelihood``), converted exactly as ``bits_per_dim`` (scaler log-determinant,
    ``- D log K``). The standard error scales by ``1 / (D ln 2)`` either way.
    """
    check_int("dim", dim, minimum=1)
    scale = dim * math.log(2.0)
    if num_levels is None:
        bpd = -logp / scale
    else:
        bpd = bits_per_dim(logp, dim, num_levels=num_levels, centered=centered, log_det=log_det)
    return bpd, stderr / scale
