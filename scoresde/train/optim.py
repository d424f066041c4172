"""Adam with a linear learning-rate warm-up and global-norm gradient clipping (score_sde's
``optimization_manager``), as small functions of plain numbers, and an update that is skipped on the
device when the loss or the gradient is not finite (no host synchronisation)."""
from __future__ import annotations

import math
from typing import Iterable

import torch

OPTIMIZERS = ("adam",)


def build_optimizer(params: Iterable[torch.nn.Parameter], name: str = "adam", lr: float = 2e-4,
                    beta1: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.Adam(betas=(beta1, 0.999))``; ``weight_decay`` is Adam's L2 term, as in score_sde.

    The fused implementation, because it takes a ``found_inf`` flag on the device and then leaves the
    weights and its moments untouched: a non-finite step is skipped without a host sync (as AMP's
    ``GradScaler`` does).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), eps=eps, weight_decay=weight_decay, fused=True)


def warmup_lr(update: int, lr: float, warmup: int) -> float:
    """Learning rate of the ``update``-th optimizer step (1-based): ``lr * min(update / warmup, 1)``.

    score_sde evaluates the same ramp at the 0-based step, so its very first update has rate 0;
    counting from 1 here makes every update move the weights.
    """
    if update < 1:
        raise ValueError(f"update must be >= 1 (the first optimizer step is update 1), got {update}")
    if warmup <= 0:
        return lr
    return lr * min(update / warmup, 1.0)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: Iterable[torch.nn.Parameter], grad_clip: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``grad_clip`` (0 disables clipping).

    Returns the global norm before clipping (a 0-dim tensor; no device sync).
    """
    params = [p for p in params if p.grad is not None]
    if grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm=grad_clip)
    return torch.nn.utils.clip_grad_norm_(params, max_norm=math.inf)


def optimize_step(optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], update: int,
                  lr: float, warmup: int, grad_clip: float,
                  loss: torch.Tensor | None = None) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Warm-up, clip, step. Returns the learning rate, the pre-clipping gradient norm and whether the
    update was skipped (a bool tensor on the device: the norm or ``loss`` was not finite).

    The global gradient norm is the one reduction this adds: a NaN or inf anywhere in the gradient
    makes it non-finite. A skipped update changes neither the weights nor the optimizer's state
    (the fused optimizers read ``found_inf``, as under AMP's ``GradScaler``).
    """
    current = warmup_lr(update, lr, warmup)
    set_lr(optimizer, current)
    grad_norm = clip_gradients(params, grad_clip)
    skipped = ~torch.isfinite(grad_norm)
    if loss is not None:
        skipped = skipped | ~torch.isfinite(loss.detach())
    optimizer.grad_scale, optimizer.found_inf = None, skipped.float()   # read by the fused step
    optimizer.step()
    return current, grad_norm, skipped
