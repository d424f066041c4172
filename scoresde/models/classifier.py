"""Noise-conditional classifiers ``p_phi(y | x_t, t)`` for classifier guidance (Song et al. 2021, App. I.1;
Dhariwal & Nichol 2021's noisy classifier), and their training loss.

The networks follow the score networks' contract: ``forward(x, noise_label) -> logits (B, num_classes)``
with the noise label the score network would see (``sde.noise_label(t)``). ``classifier_mlp`` is the
residual MLP of ``scoresde/models/mlp.py`` with a ``num_classes``-way head; ``classifier_unet`` the encoder half of
the DDPM++ / NCSN++ U-Net (``scoresde/models/layers.py`` blocks), then GroupNorm-SiLU, global average pooling and
a dense head (ADM's classifier with mean instead of attention pooling). ``get_logits_fn`` turns a network
into ``logits_fn(x, t)`` and ``classifier_loss`` is the per-sample cross-entropy on
``x_t ~ p_0t(x_t | x_0)``, ``t ~ U(eps, T)`` as in the DSM loss.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoresde.sde_lib import SDE
from scoresde.utils import append_dims, check_float, check_int, check_positive

from .layers import (AttnBlock, Downsample, NoiseEmbedding, ResnetBlockBigGAN, ResnetBlockDDPM, check_labels,
                     conv2d, dense, group_norm)
from .mlp import ResidualBlock
from .registry import MODELS
from .unet import _validate

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_num_classes(num_classes) -> int:
    return check_int("num_classes", num_classes, 2)  # a classifier needs at least two classes


@MODELS.register("classifier_mlp")
class ClassifierMLP(nn.Module):
    """``forward(x (B, dim), noise_label (B,)) -> logits (B, num_classes)``: the score MLP's body."""

    data_rank = 1               # items are vectors (D,)

    def __init__(self, *,
                 dim: int,                      # data dimension D
                 hidden: int,                   # width
                 n_blocks: int,                 # residual blocks
                 embedding_type: str,           # "positional" | "fourier"
                 fourier_scale: float,          # std of the Fourier features
                 num_classes: int):             # classes (>= 2)
        super().__init__()
        dim, hidden = check_int("dim", dim, 1), check_int("hidden", hidden, 1)
        n_blocks = check_int("n_blocks", n_blocks, 0)
        check_positive("fourier_scale", fourier_scale)
        self.dim, self.num_classes = dim, _check_num_classes(num_classes)
        self.embed = NoiseEmbedding(embedding_type, hidden, hidden, fourier_scale)
        self.linear_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden) for _ in range(n_blocks)])
        self.norm_out = nn.LayerNorm(hidden)
        self.linear_out = nn.Linear(hidden, self.num_classes)

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if noise_label.shape != (x.shape[0],):
            raise ValueError(f"noise_label must have shape ({x.shape[0]},), got {tuple(noise_label.shape)}")
        temb = self.embed(noise_label)
        h = self.linear_in(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.linear_out(F.silu(self.norm_out(h)))


@MODELS.register("classifier_unet")
class ClassifierUNet(nn.Module):
    """The encoder half of the DDPM++ / NCSN++ U-Net with a classification head:
    ``forward(x (B, C, H, W), noise_label (B,)) -> logits (B, num_classes)``.

    Per resolution ``num_res_blocks`` residual blocks (self-attention at ``attn_resolutions``), a
    downsampling between levels (a BigGAN block or a plain resampler, as the U-Net), then residual,
    attention and residual blocks at the lowest resolution, GroupNorm-SiLU, the mean over pixels and a
    dense layer. Arguments as :class:`models.unet.UNet` (no input/output pyramids).
    """

    data_rank = 3               # items are images (C, H, W)

    def __init__(self, *,
                 in_channels: int,              # image channels
                 image_size: int,               # height = width
                 nf: int,                       # base channels
                 ch_mult: Sequence[int],        # channel multiplier per resolution level
                 num_res_blocks: int,           # residual blocks per level
                 attn_resolutions: Sequence[int],  # resolutions with self-attention
                 dropout: float,                # dropout in the residual blocks
                 resblock_type: str,            # "biggan" | "ddpm"
                 embedding_type: str,           # "positional" | "fourier"
                 fourier_scale: float,          # std of the Fourier features
                 fir: bool,                     # FIR up/down-sampling
                 fir_kernel: Sequence[float],   # the FIR kernel
                 skip_rescale: bool,            # skip connections scaled by 1/sqrt(2)
                 resamp_with_conv: bool,        # convolutions in down-sampling
                 init_scale: float,             # scale of the residual branches' last layer
                 num_classes: int):             # classes (>= 2)
        super().__init__()
        self.num_classes = _check_num_classes(num_classes)
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        _validate(in_channels, image_size, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resblock_type,
                  embedding_type, fourier_scale, "none", "none", "sum", 0)
        self.in_channels, self.image_size = in_channels, image_size
        temb_dim = 4 * nf
        if resblock_type == "ddpm":
            resblock = functools.partial(ResnetBlockDDPM, temb_dim=temb_dim, dropout=dropout,
                                         skip_rescale=skip_rescale, init_scale=init_scale)
            downsample = functools.partial(Downsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        else:
            resblock = functools.partial(ResnetBlockBigGAN, temb_dim=temb_dim, dropout=dropout, fir=fir,
                                         fir_kernel=fir_kernel, skip_rescale=skip_rescale, init_scale=init_scale)
            downsample = functools.partial(resblock, down=True)
        attn = functools.partial(AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        self.embed = NoiseEmbedding(embedding_type, nf, temb_dim, fourier_scale)
        self.conv_in = conv2d(in_channels, nf)
        self.blocks = nn.ModuleList()   # every block takes (h, temb); attention is wrapped to ignore temb
        ch, resolution = nf, image_size
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.blocks.append(resblock(in_ch=ch, out_ch=nf * mult))
                ch = nf * mult
                if resolution in attn_resolutions:
                    self.blocks.append(_NoTemb(attn(channels=ch)))
            if level != len(ch_mult) - 1:
                self.blocks.append(downsample(in_ch=ch))
                resolution //= 2
        self.blocks.extend([resblock(in_ch=ch), _NoTemb(attn(channels=ch)), resblock(in_ch=ch)])
        self.head = nn.Sequential(group_norm(ch), nn.SiLU())
        self.linear_out = dense(ch, self.num_classes)

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if noise_label.shape != (x.shape[0],):
            raise ValueError(f"noise_label must have shape ({x.shape[0]},), got {tuple(noise_label.shape)}")
        temb = self.embed(noise_label)
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.linear_out(self.head(h).mean(dim=(2, 3)))


class _NoTemb(nn.Module):
    """A block of signature ``(x)`` called as ``(x, temb)``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        return self.block(x)


def get_logits_fn(sde: SDE, classifier: nn.Module, train: bool = False, continuous: bool = True) -> LogitsFn:
    """``logits_fn(x, t) -> (B, num_classes)``: the classifier in train or eval mode, fed the noise label
    ``sde.noise_label(t, continuous)`` a score network of the same SDE would see."""
    def logits_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        classifier.train(train)
        return classifier(x, sde.noise_label(t, continuous))
    return logits_fn


def classifier_loss(sde: SDE, logits_fn: LogitsFn, x0: torch.Tensor, labels: torch.Tensor, *,
                    eps: float = 1e-5, generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                    z: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample cross-entropy ``-log p_phi(y | x_t, t)`` (nats, shape ``(B,)``) on the perturbed data
    ``x_t = alpha_t x_0 + sigma_t z`` (Song et al. 2021, App. I.1).

    ``t ~ U(eps, T)`` then ``z ~ N(0, I)`` are drawn from ``generator`` in the order ``dsm_loss`` draws
    them (so ``training.losses.dsm_noise`` gives the same ``t``, ``z`` for a batch); given ``t`` (and
    ``z``), nothing is drawn. ``labels`` must be integers in ``[0, num_classes)`` (checked: one host sync
    on an accelerator).
    """
    eps = check_float("eps", eps, 0.0, sde.T, open_low=True, open_high=True)
    if not torch.is_tensor(labels) or labels.shape != (x0.shape[0],):
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"labels must have shape ({x0.shape[0]},), got {got}")
    if t is None:
        t = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype) * (sde.T - eps) + eps
    if z is None:
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif z.shape != x0.shape:
        raise ValueError(f"z must have the shape of x0 {tuple(x0.shape)}, got {tuple(z.shape)}")
    mean, std = sde.marginal_prob(x0, t)
    logits = logits_fn(mean + append_dims(std, x0.ndim) * z, t)
    check_labels(labels, logits.shape[1], name="labels")
    return F.cross_entropy(logits, labels.long(), reduction="none")
