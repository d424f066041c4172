"""Image conditions of super-resolution networks (cascaded diffusion: Ho et al. 2022, "Cascaded Diffusion
Models"; Saharia et al. 2022, Imagen): the low-resolution view of an image, the resampling between
resolutions, noise-conditioning augmentation of the condition, and how a condition travels to the
network as one tensor.

A condition is packed into one tensor ``cond`` of shape ``(B, C + 2, r, r)`` (so it is sliced, moved,
concatenated and captured like class labels are):

- channels ``0..C-1``: the low-resolution image ``y`` (model space), noised to level ``s``; zeros for the
  null condition of classifier-free guidance;
- channel ``C``: the augmentation level ``s`` in ``[0, 1]`` (constant over the image);
- channel ``C + 1``: the flag ``keep``: 1 for a real condition, 0 for the null one (constant).

The low-resolution view is average pooling by the integer factor ``H / r``; the network sees the
condition upsampled to its own resolution by nearest-neighbour repetition, so ``downsample(upsample(y))
== y`` exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, check_int


def check_factor(size: int, low_res: int, name: str = "low_res") -> int:
    """The integer factor ``size / low_res``; ``ValueError`` naming ``name`` unless it divides."""
    low_res = check_int(name, low_res, 1)
    if size % low_res:
        raise ValueError(f"{name} must divide the image size {size} (an integer pooling factor), got {low_res}")
    return size // low_res


def downsample(x: torch.Tensor, low_res: int) -> torch.Tensor:
    """``(B, C, H, H) -> (B, C, r, r)``: the mean of each ``H/r x H/r`` block (average pooling)."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"x must be square images (B, C, H, H), got {tuple(x.shape)}")
    factor = check_factor(x.shape[-1], low_res)
    return x if factor == 1 else F.avg_pool2d(x, factor)


def upsample(y: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, C, r, r) -> (B, C, size, size)`` by nearest-neighbour repetition (``size`` a multiple of ``r``)."""
    factor = check_factor(size, y.shape[-1], "the condition's resolution")
    return y if factor == 1 else y.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def noised_condition(sde: SDE, y: torch.Tensor, level: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Noise-conditioning augmentation (Ho et al. 2022, Sec. 4.1; Imagen, Sec. 2.5): ``y_s = alpha_s y +
    sigma_s z``, the model's own forward process at time ``s = level`` (B,); level 0 is ``y`` itself."""
    mean, std = sde.marginal_prob(y, level)
    noised = mean + append_dims(std, y.ndim) * z
    return torch.where(append_dims(level > 0, y.ndim), noised, y)


def pack_condition(image: torch.Tensor, level: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``(B, C + 2, r, r)``: the image (zeroed where not ``keep``), the level and the keep flag as channels."""
    if image.ndim != 4 or level.shape != (image.shape[0],) or keep.shape != (image.shape[0],):
        raise ValueError(f"image must be (B, C, r, r) with level and keep of shape (B,), got "
                         f"{tuple(image.shape)}, {tuple(level.shape)}, {tuple(keep.shape)}")
    keep = keep.to(image.dtype)
    plane = torch.ones_like(image[:, :1])
    return torch.cat([image * append_dims(keep, 4), plane * append_dims(level.to(image.dtype) * keep, 4),
                      plane * append_dims(keep, 4)], dim=1)


def unpack_condition(cond: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(image (B, C, r, r), level (B,), keep (B,))`` of a packed condition of ``channels`` image channels."""
    if not torch.is_tensor(cond) or cond.ndim != 4 or cond.shape[1] != channels + 2:
        got = tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__
        raise ValueError(f"cond must be a packed image condition (B, {channels + 2}, r, r) "
                         f"(models.image_cond.pack_condition), got {got}")
    return cond[:, :channels], cond[:, channels, 0, 0], cond[:, channels + 1, 0, 0]


def null_condition(like: torch.Tensor) -> torch.Tensor:
    """The null condition of classifier-free guidance, shaped like the packed condition ``like``: zeros."""
    return torch.zeros_like(like)


def image_condition(sde: SDE, y: torch.Tensor, level: torch.Tensor, z: torch.Tensor,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """The packed condition of low-resolution images ``y`` noised to ``level`` with noise ``z`` (null where
    ``keep`` is False)."""
    keep = torch.ones(y.shape[0], dtype=torch.bool, device=y.device) if keep is None else keep
    return pack_condition(noised_condition(sde, y, level, z), level, keep)


def fixed_level_condition(sde: SDE, y: torch.Tensor, level: float, generator: torch.Generator | None = None
                          ) -> torch.Tensor:
    """The packed condition of ``y`` at one augmentation ``level`` for every item (sampling's
    ``sampling.cond_noise``); the noise (for ``level > 0``) is drawn from ``generator``."""
    levels = torch.full((y.shape[0],), float(level), dtype=y.dtype, device=y.device)
    z = torch.zeros_like(y)
    if level > 0:
        z = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                        device=y.device if generator is None else generator.device).to(y.device)
    return image_condition(sde, y, levels, z)
