"""Class labels in training and evaluation: what the loss is called with for a class-conditional score
model (the score of ``p_t(x | y)``, labels as ``cond``), a model trained with label dropout (Ho & Salimans
2022: a fraction of labels replaced by the null label, so one network learns ``p_t(x)`` too) and a
noise-conditional classifier (``logits_fn`` and the labels as targets). An image-conditioned
(super-resolution) model takes a packed low-resolution condition instead (``models.image_cond``),
noised to a random augmentation level and dropped to the null condition the same way."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scoresde.models import get_logits_fn, get_score_fn, null_label
from scoresde.models.image_cond import downsample, fixed_level_condition, image_condition
from scoresde.data.pipeline import DataSpec, to_model_space
from scoresde.data.streams import Stream, generator
from scoresde.sde_lib import SDE
from scoresde.run.options import RunOptions


def network_fn(options: RunOptions, sde: SDE, model: nn.Module, labels: torch.Tensor | None, *,
               train: bool) -> Callable:
    """The function the loss takes: a classifier's ``logits_fn``, or the score function, given the
    labels as ``cond`` when the network is class-conditional."""
    if options.loss.is_classifier:
        return get_logits_fn(sde, model, train=train, continuous=options.network.continuous)
    cond = labels if options.network.num_classes or options.network.cond_channels else None
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


# ---------------------------------------------------------------------------------------- image conditions
def low_res_view(options: RunOptions, x: torch.Tensor) -> torch.Tensor:
    """What an image-conditioned model is conditioned on in training: the model-space batch average-pooled
    to ``data.low_res``."""
    return downsample(x, options.data.low_res)


def draw_condition_noise(options: RunOptions, shape: tuple, generator: torch.Generator, device, dtype) -> dict:
    """Noise-conditioning augmentation draws for ``shape = (B, C, r, r)`` conditions: the levels
    ``s ~ U[0, training.cond_noise_max]`` (``cond_level``, (B,)) and the noise ``cond_z``."""
    level = torch.rand(shape[0], generator=generator, device=device, dtype=dtype) * options.train.cond_noise_max
    return {"cond_level": level, "cond_z": torch.randn(shape, generator=generator, device=device, dtype=dtype)}


def conditioned_labels(options: RunOptions, sde: SDE, labels: torch.Tensor | None, noise: dict):
    """The ``cond`` of a training batch; pops the conditioning draws from ``noise``: label dropout's
    ``drop`` for class labels, or for an image condition (``labels`` the low-resolution views) its
    augmentation (``cond_level``, ``cond_z``) and the null condition where ``drop``."""
    drop = noise.pop("drop", None)
    if not options.network.cond_channels:
        return labels if drop is None else drop_labels(labels, drop, options.network.num_classes)
    level, z = noise.pop("cond_level"), noise.pop("cond_z")
    keep = None if drop is None else ~drop
    return image_condition(sde, labels, level, z, keep)


def fixed_conditions(options: RunOptions, sde: SDE, y: torch.Tensor) -> torch.Tensor:
    """Packed conditions of model-space low-resolution images ``y`` at ``sampling.cond_noise`` (the noise
    from the run's ``LOW_RES`` stream: the same conditions every time)."""
    return fixed_level_condition(sde, y, options.sampler.cond_noise, generator(options.seed, Stream.LOW_RES))


def heldout_conditions(options: RunOptions, sde: SDE, spec: DataSpec, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` held-out items in turn: their model-space images (dequantised from the ``LOW_RES`` stream)
    and the packed conditions of their low-resolution views at ``sampling.cond_noise``."""
    items = spec.test[torch.arange(num) % len(spec.test)]
    x = to_model_space(items, spec, generator(options.seed, Stream.LOW_RES), train=False)
    return x, fixed_conditions(options, sde, low_res_view(options, x))
