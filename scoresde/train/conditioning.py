"""Class labels in training and evaluation: what the loss is called with for a class-conditional score
model (the score of ``p_t(x | y)``, labels as ``cond``), a model trained with label dropout (Ho & Salimans
2022: a fraction of labels replaced by the null label, so one network learns ``p_t(x)`` too) and a
noise-conditional classifier (``logits_fn`` and the labels as targets)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scoresde.models import get_logits_fn, get_score_fn, null_label
from scoresde.sde_lib import SDE
from scoresde.run.options import RunOptions


def network_fn(options: RunOptions, sde: SDE, model: nn.Module, labels: torch.Tensor | None, *,
               train: bool) -> Callable:
    """The function the loss takes: a classifier's ``logits_fn``, or the score function, given the
    labels as ``cond`` when the network is class-conditional."""
    if options.loss.is_classifier:
        return get_logits_fn(sde, model, train=train, continuous=options.network.continuous)
    cond = labels if options.network.num_classes else None
    return get_score_fn(sde, model, train=train, cond=cond, **options.network.score_kwargs)


def loss_targets(options: RunOptions, labels: torch.Tensor | None) -> dict:
    """Extra keyword arguments of the loss: the classifier's targets."""
    return {"labels": labels} if options.loss.is_classifier else {}


def drop_labels(labels: torch.Tensor, drop: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label dropout: the null label ``num_classes`` where ``drop`` is True."""
    return torch.where(drop, torch.full_like(labels, null_label(num_classes)), labels)


def draw_drop(n: int, probability: float, generator: torch.Generator, device) -> torch.Tensor:
    """Which of ``n`` labels label dropout replaces: ``u < probability``, ``u ~ U[0, 1)``."""
    return torch.rand(n, generator=generator, device=device) < probability
