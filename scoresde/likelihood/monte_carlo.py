"""Monte-Carlo bookkeeping shared by the likelihood bounds: draws split into chunks, rows repeated per
draw, and the mean of draws with its standard error."""
from __future__ import annotations

import math
from typing import Tuple

import torch


def repeat_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each sample ``k`` times in a row: ``(B, ...) -> (B k, ...)``, row ``b k + j`` is copy ``j`` of ``b``."""
    return x.repeat_interleave(k, dim=0)


def chunks(n: int, size: int) -> list:
    """``n`` split into pieces of at most ``size``: ``chunks(10, 4) == [4, 4, 2]``."""
    return [min(size, n - start) for start in range(0, n, size)]


def mean_and_stderr(draws: torch.Tensor, dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean over ``dim`` and its standard error ``std / sqrt(n)`` (NaN for a single draw)."""
    n = draws.shape[dim]
    std = draws.std(dim=dim) if n > 1 else torch.full_like(draws.select(dim, 0), math.nan)
    return draws.mean(dim=dim), std / math.sqrt(n)
