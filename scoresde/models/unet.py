"""DDPM++ and NCSN++ U-Nets (Song et al. 2021, App. H) for images ``(B, C, H, W)``.

One class, :class:`UNet`, registered under both names, as in score_sde (whose DDPM++ is its NCSN++
class with other settings): the arguments decide the architecture. DDPM++ has a positional
embedding, no FIR and no input pyramid; NCSN++ a Fourier embedding of ``log sigma``, FIR resampling
and a residual input pyramid. Every argument is required: the defaults, with the paper's CIFAR-10
values, live in one place, ``configs/default.py`` (``use_ddpmpp`` / ``use_ncsnpp`` select a flavour;
``scoresde.cli.factory.network_defaults(name)`` gives them as keyword arguments).

The network is a pure function of ``(x, noise_label, cond)``: data scaling and the VE ``1/sigma``
output scaling live in the score wrapper.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoresde.utils import check_choice, check_float, check_int, check_positive

from .image_cond import unpack_condition, upsample
from .layers import (EMBEDDING_TYPES, AttnBlock, Combine, Downsample, NoiseEmbedding, ResnetBlockBigGAN,
                     ResnetBlockDDPM, Upsample, conv2d, group_norm, skip_add)
from .registry import MODELS

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
PROGRESSIVE_COMBINE = ("sum", "cat")


def _validate(in_channels, image_size, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resblock_type,
              embedding_type, fourier_scale, progressive, progressive_input, progressive_combine, num_classes):
    """Raise ``ValueError`` naming the first bad argument and its allowed values."""
    check_choice("resblock_type", resblock_type, RESBLOCK_TYPES)
    check_choice("embedding_type", embedding_type, EMBEDDING_TYPES)
    check_choice("progressive", progressive, PROGRESSIVE)
    check_choice("progressive_input", progressive_input, PROGRESSIVE_INPUT)
    check_choice("progressive_combine", progressive_combine, PROGRESSIVE_COMBINE)
    for name, value, minimum in (("in_channels", in_channels, 1), ("image_size", image_size, 1),
                                 ("num_res_blocks", num_res_blocks, 1), ("num_classes", num_classes, 0),
                                 ("nf", nf, 4)):
        check_int(name, value, minimum)
    if nf % 4 != 0:
        raise ValueError(f"nf must be a positive multiple of 4 (GroupNorm uses min(C // 4, 32) groups), got {nf!r}")
    if isinstance(ch_mult, (str, bytes)) or len(ch_mult) == 0:
        raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}")
    for i, m in enumerate(ch_mult):
        check_int(f"ch_mult[{i}]", m, 1)
    if image_size % 2 ** (len(ch_mult) - 1) != 0:
        raise ValueError(f"image_size must be divisible by 2**(len(ch_mult)-1) = {2 ** (len(ch_mult) - 1)}, "
                         f"got {image_size}")
    resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
    bad = [r for r in attn_resolutions if r not in resolutions]
    if bad:
        raise ValueError(f"attn_resolutions must be among the resolutions {resolutions}, got {list(attn_resolutions)}")
    check_float("dropout", dropout, 0.0, 1.0, open_high=True)
    check_positive("fourier_scale", fourier_scale)


@MODELS.register("ddpmpp")
@MODELS.register("ncsnpp")
class UNet(nn.Module):
    """NCSN++ / DDPM++ U-Net: ``forward(x (B, C, H, W), noise_label (B,), cond=None) -> (B, C, H, W)``.

    ``noise_label`` is what the embedding expects: ``999 t`` or a timestep for ``"positional"``,
    sigma (positive; the network takes its log) for ``"fourier"``. ``cond`` holds class labels when
    ``num_classes > 0``, or with ``cond_channels > 0`` a packed image condition (``models.image_cond``):
    the low-resolution image, upsampled (nearest) to ``image_size``, and its keep flag join the input
    channels, and a positional embedding of its augmentation level ``999 s`` is added to the time
    embedding (Ho et al. 2022, Cascaded Diffusion Models).
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
                 resamp_with_conv: bool,        # convolutions in up/down-sampling
                 init_scale: float,             # scale of the output layers' initialisation
                 progressive: str,              # output pyramid: "none" | "output_skip" | "residual"
                 progressive_input: str,        # input pyramid: "none" | "input_skip" | "residual"
                 progressive_combine: str,      # "sum" | "cat"
                 num_classes: int = 0,          # class-conditional when > 0
                 learn_variance: bool = False,  # 2 C outputs: eps and the variance interpolation v
                 cond_channels: int = 0):       # image-conditioned (super-resolution) when > 0
        super().__init__()
        self.cond_channels = check_int("cond_channels", cond_channels, 0)
        if cond_channels and num_classes:
            raise ValueError(f"cond_channels={cond_channels} (an image condition) and num_classes={num_classes} "
                             f"(class labels) cannot both be set: cond carries one of them")
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        _validate(in_channels, image_size, nf, ch_mult, num_res_blocks, attn_resolutions, dropout, resblock_type,
                  embedding_type, fourier_scale, progressive, progressive_input, progressive_combine,
                  num_classes)
        self.in_channels, self.image_size, self.num_res_blocks = in_channels, image_size, num_res_blocks
        # Nichol & Dhariwal 2021, Sec. 3.1: the output doubles to (eps, v) when the variance is learned
        self.learn_variance = bool(learn_variance)
        self.out_channels = in_channels * (2 if self.learn_variance else 1)
        self.resblock_type, self.skip_rescale = resblock_type, skip_rescale
        self.progressive, self.progressive_input = progressive, progressive_input
        self.resolutions = [image_size // 2 ** i for i in range(len(ch_mult))]
        self._make_factories(nf, dropout, fir, tuple(fir_kernel), skip_rescale, resamp_with_conv, init_scale,
                             progressive_combine)
        self.embed = NoiseEmbedding(embedding_type, nf, 4 * nf, fourier_scale, num_classes)
        # the image condition and its keep flag join the input channels; its level has its own embedding
        self.conv_in = conv2d(in_channels + (cond_channels + 1 if cond_channels else 0), nf)
        self.cond_level_embed = NoiseEmbedding("positional", nf, 4 * nf) if cond_channels else None
        skip_channels = self._build_encoder(nf, ch_mult, attn_resolutions, progressive_combine)
        ch = skip_channels[-1]
        self.mid_block_0, self.mid_attn, self.mid_block_1 = (self._resblock(in_ch=ch), self._attn(channels=ch),
                                                             self._resblock(in_ch=ch))
        ch = self._build_decoder(nf, ch_mult, attn_resolutions, skip_channels, init_scale)
        self.head = None
        if progressive != "output_skip":
            self.head = nn.Sequential(group_norm(ch), nn.SiLU(), conv2d(ch, self.out_channels, init_scale=init_scale))

    # -------------------------------------------------------------------------------------------- build
    def _make_factories(self, nf, dropout, fir, fir_kernel, skip_rescale, resamp_with_conv, init_scale, combine):
        """Partially applied block constructors shared by the encoder and decoder builders."""
        temb_dim = 4 * nf
        if self.resblock_type == "ddpm":
            self._resblock = functools.partial(ResnetBlockDDPM, temb_dim=temb_dim, dropout=dropout,
                                               skip_rescale=skip_rescale, init_scale=init_scale)
        else:
            self._resblock = functools.partial(ResnetBlockBigGAN, temb_dim=temb_dim, dropout=dropout, fir=fir,
                                               fir_kernel=fir_kernel, skip_rescale=skip_rescale,
                                               init_scale=init_scale)
        self._attn = functools.partial(AttnBlock, skip_rescale=skip_rescale, init_scale=init_scale)
        self._down = functools.partial(Downsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        self._up = functools.partial(Upsample, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        # Input pyramid: plain resampling for "input_skip", a learned one for "residual" (likewise outputs).
        self._pyramid_down = functools.partial(Downsample, with_conv=self.progressive_input == "residual",
                                               fir=fir, fir_kernel=fir_kernel)
        self._pyramid_up = functools.partial(Upsample, with_conv=self.progressive == "residual",
                                             fir=fir, fir_kernel=fir_kernel)
        self._combine = functools.partial(Combine, method=combine)

    def _resampler(self, ch: int, up: bool) -> nn.Module:
        """The block that changes resolution between levels: a BigGAN resblock or a plain (conv) resampler."""
        if self.resblock_type == "biggan":
            return self._resblock(in_ch=ch, up=up, down=not up)
        return self._up(in_ch=ch) if up else self._down(in_ch=ch)

    def _build_encoder(self, nf, ch_mult, attn_resolutions, combine_method) -> list[int]:
        """Create ``self.encoder`` (one ModuleDict per resolution); return the skip-connection channels."""
        self.encoder = nn.ModuleList()
        skip_channels, ch, pyramid_ch = [nf], nf, self.in_channels
        for level, mult in enumerate(ch_mult):
            stage = nn.ModuleDict({"blocks": nn.ModuleList(), "attns": nn.ModuleList()})
            use_attn = self.resolutions[level] in attn_resolutions
            for _ in range(self.num_res_blocks):
                stage["blocks"].append(self._resblock(in_ch=ch, out_ch=nf * mult))
                ch = nf * mult
                stage["attns"].append(self._attn(channels=ch) if use_attn else nn.Identity())
                skip_channels.append(ch)
            if level != len(ch_mult) - 1:
                stage["downsample"] = self._resampler(ch, up=False)
                if self.progressive_input == "input_skip":
                    stage["pyramid"] = self._pyramid_down(in_ch=pyramid_ch)
                    stage["combine"] = self._combine(dim1=pyramid_ch, dim2=ch)
                    ch = 2 * ch if combine_method == "cat" else ch
                elif self.progressive_input == "residual":
                    stage["pyramid"] = self._pyramid_down(in_ch=pyramid_ch, out_ch=ch)
                    pyramid_ch = ch
                skip_channels.append(ch)
            self.encoder.append(stage)
        return skip_channels

    def _build_decoder(self, nf, ch_mult, attn_resolutions, skip_channels, init_scale) -> int:
        """Create ``self.decoder`` (one ModuleDict per resolution, lowest first); return the final channels."""
        self.decoder = nn.ModuleList()
        skip_channels, ch, pyramid_ch = list(skip_channels), skip_channels[-1], 0
        for level in reversed(range(len(ch_mult))):
            stage = nn.ModuleDict({"blocks": nn.ModuleList()})
            for _ in range(self.num_res_blocks + 1):
                stage["blocks"].append(self._resblock(in_ch=ch + skip_channels.pop(), out_ch=nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            stage["attn"] = self._attn(channels=ch) if self.resolutions[level] in attn_resolutions else nn.Identity()
            pyramid_ch = self._add_output_pyramid(stage, level, ch, pyramid_ch, init_scale)
            if level != 0:
                stage["upsample"] = self._resampler(ch, up=True)
            self.decoder.append(stage)
        return ch

    def _add_output_pyramid(self, stage, level, ch, pyramid_ch, init_scale) -> int:
        """NCSN++ output pyramid modules for one decoder level; returns the pyramid's channels after it."""
        if self.progressive == "none":
            return pyramid_ch
        is_first = level == len(self.resolutions) - 1
        if not is_first:
            stage["pyramid_up"] = (self._pyramid_up(in_ch=pyramid_ch) if self.progressive == "output_skip"
                                   else self._pyramid_up(in_ch=pyramid_ch, out_ch=ch))
        if self.progressive == "output_skip":
            stage["pyramid_norm"] = group_norm(ch)
            stage["pyramid_conv"] = conv2d(ch, self.out_channels, init_scale=init_scale)
            return self.out_channels
        if is_first:  # "residual": the first pyramid image is a projection of the features
            stage["pyramid_norm"] = group_norm(ch)
            stage["pyramid_conv"] = conv2d(ch, ch)
        return ch

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x, noise_label)
        if self.cond_channels:
            temb, inputs = self._image_conditioned(x, noise_label, cond)
        else:
            temb, inputs = self.embed(noise_label, cond), x
        skips = self._encode(x, inputs, temb)
        h = self.mid_block_1(self.mid_attn(self.mid_block_0(skips[-1], temb)), temb)
        h, pyramid = self._decode(h, skips, temb)
        return pyramid if self.head is None else self.head(h)

    def _check_inputs(self, x: torch.Tensor, noise_label: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if noise_label.shape != (x.shape[0],):
            raise ValueError(f"noise_label must have shape ({x.shape[0]},), got {tuple(noise_label.shape)}")

    def _image_conditioned(self, x, noise_label, cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The time embedding plus the level's, and the input with the upsampled condition and keep flag."""
        if cond is None:
            raise ValueError(f"this network is image-conditioned (cond_channels={self.cond_channels}): cond must "
                             f"be a packed condition (models.image_cond; null_condition for none), got None")
        image, level, _ = unpack_condition(cond, self.cond_channels)
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"cond must have the batch size of x ({x.shape[0]}), got {cond.shape[0]}")
        temb = self.embed(noise_label) + self.cond_level_embed(999.0 * level)
        up = upsample(torch.cat([image, cond[:, self.cond_channels + 1:]], dim=1), self.image_size)
        return temb, torch.cat([x, up.to(x.dtype)], dim=1)

    def _encode(self, x: torch.Tensor, inputs: torch.Tensor, temb: torch.Tensor) -> list[torch.Tensor]:
        skips = [self.conv_in(inputs)]
        pyramid = x
        for stage in self.encoder:
            for block, attn in zip(stage["blocks"], stage["attns"]):
                skips.append(attn(block(skips[-1], temb)))
            if "downsample" in stage:
                h = stage["downsample"](skips[-1], temb)
                h, pyramid = self._merge_input_pyramid(stage, h, pyramid)
                skips.append(h)
        return skips

    def _merge_input_pyramid(self, stage, h, pyramid):
        """NCSN++ input pyramid: downsample the input image and merge it into the features."""
        if self.progressive_input == "input_skip":
            pyramid = stage["pyramid"](pyramid)
            return stage["combine"](pyramid, h), pyramid
        if self.progressive_input == "residual":
            pyramid = skip_add(stage["pyramid"](pyramid), h, self.skip_rescale)
            return pyramid, pyramid
        return h, pyramid

    def _decode(self, h, skips, temb):
        skips, pyramid = list(skips), None
        for stage in self.decoder:
            for block in stage["blocks"]:
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
            h = stage["attn"](h)
            h, pyramid = self._merge_output_pyramid(stage, h, pyramid)
            if "upsample" in stage:
                h = stage["upsample"](h, temb)
        return h, pyramid

    def _merge_output_pyramid(self, stage, h, pyramid):
        """NCSN++ output pyramid: accumulate an image (``output_skip``) or a residual feature map."""
        if self.progressive == "none":
            return h, pyramid
        if "pyramid_up" in stage:
            pyramid = stage["pyramid_up"](pyramid)
        if self.progressive == "output_skip":
            out = stage["pyramid_conv"](F.silu(stage["pyramid_norm"](h)))
            return h, out if pyramid is None else pyramid + out
        if pyramid is None:
            return h, stage["pyramid_conv"](F.silu(stage["pyramid_norm"](h)))
        pyramid = skip_add(pyramid, h, self.skip_rescale)
        return pyramid, pyramid
