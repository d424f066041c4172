"""Building blocks of the DDPM++ / NCSN++ networks (Song et al. 2021, App. H) in plain PyTorch.

Initialisation follows DDPM (Ho et al. 2020): ``variance_scaling(scale, "fan_avg", "uniform")``, biases
zero. FIR resampling follows StyleGAN2 (Karras et al. 2020): ``upfirdn2d`` is written with ordinary
``conv2d`` calls, so nothing is compiled and everything runs on any device and dtype.
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoresde.utils import check_choice, check_int

EMBEDDING_TYPES = ("fourier", "positional")
FOURIER_SEED = 20210101  # fixed seed: the random Fourier frequencies do not depend on the global RNG


# ----------------------------------------------------------------------------------------------------
# Initialisation and basic layers
# ----------------------------------------------------------------------------------------------------

def _fans(shape: Sequence[int]) -> tuple[float, float]:
    """Fan-in / fan-out of a weight shaped ``(out, in, *kernel)`` (PyTorch layout)."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """DDPM's initialiser, in place: uniform with variance ``scale / fan_avg``; ``scale == 0`` means 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    fan_in, fan_out = _fans(weight.shape)
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
           bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """Convolution with DDPM initialisation; ``padding`` defaults to 'same' for odd kernels."""
    padding = kernel // 2 if padding is None else padding
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)
    default_init_(conv.weight, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int, init_scale: float = 1.0) -> nn.Linear:
    """Linear layer with DDPM initialisation."""
    layer = nn.Linear(in_dim, out_dim)
    default_init_(layer.weight, init_scale)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(C // 4, 32)`` groups, as in NCSN++."""
    return nn.GroupNorm(num_groups=max(min(channels // 4, 32), 1), num_channels=channels, eps=1e-6)


def skip_add(x: torch.Tensor, h: torch.Tensor, skip_rescale: bool) -> torch.Tensor:
    """Residual sum, divided by sqrt(2) when ``skip_rescale`` keeps the variance fixed (Song et al. 2021, App. H)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


# ----------------------------------------------------------------------------------------------------
# Noise-level embeddings
# ----------------------------------------------------------------------------------------------------

def get_timestep_embedding(labels: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of a ``(B,)`` label, as in the Transformer and DDPM (Ho et al. 2020, App. B)."""
    if labels.ndim != 1:
        raise ValueError(f"noise_label must have shape (B,), got {tuple(labels.shape)}")
    half = dim // 2
    dtype = torch.float64 if labels.dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_positions) / max(half - 1, 1)
                      * torch.arange(half, dtype=dtype, device=labels.device))
    args = labels.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features ``[sin 2πWs, cos 2πWs]`` with ``W ~ N(0, scale²)`` (Tancik et al. 2020; NCSN++).

    ``W`` is a buffer drawn from a generator with a fixed seed, so construction is deterministic and does
    not consume the global RNG.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 16.0):
        super().__init__()
        gen = torch.Generator().manual_seed(FOURIER_SEED)
        self.register_buffer("W", torch.randn(embedding_size, generator=gen) * scale)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        proj = s[:, None] * self.W[None, :].to(s.dtype) * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def null_label(num_classes: int) -> int:
    """The "no class" label of a class-conditional network, for classifier-free guidance (Ho & Salimans
    2022): index ``num_classes``, one past the real classes ``0..num_classes-1``."""
    return check_int("num_classes", num_classes, 1)


def check_labels(labels: torch.Tensor, num_classes: int, allow_null: bool = False, name: str = "cond") -> None:
    """``ValueError`` unless ``labels`` are integers in ``[0, num_classes)`` (``[0, num_classes]`` with the
    null label when ``allow_null``); one host sync on an accelerator."""
    if not torch.is_tensor(labels) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        got = labels.dtype if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"{name} must be an integer tensor of class labels, got {got}")
    high = num_classes if allow_null else num_classes - 1
    if labels.numel() and bool(((labels < 0) | (labels > high)).any()):
        allowed = (f"[0, {num_classes}) or the null label {num_classes}" if allow_null
                   else f"[0, {num_classes})")
        raise ValueError(f"{name} must hold class labels in {allowed}, got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


class NoiseEmbedding(nn.Module):
    """Noise label ``(B,)`` -> features ``(B, out_dim)``: sinusoidal or Fourier, then dense-SiLU-dense (NCSN++).

    ``embedding_type="positional"`` embeds the label itself (e.g. ``999 t`` or a timestep index);
    ``"fourier"`` embeds ``log(label)`` and so needs positive labels (sigmas), as NCSN++ does.
    With ``num_classes > 0`` a learned class embedding of ``cond`` is added to the result (as in ADM/EDM);
    its table has ``num_classes + 1`` rows, the last for the null label ``null_label(num_classes)`` that
    classifier-free guidance trains with label dropout. A label outside ``[0, num_classes]`` is a
    ``ValueError``.
    """

    def __init__(self, embedding_type: str, base_dim: int, out_dim: int, fourier_scale: float = 16.0,
                 num_classes: int = 0):
        super().__init__()
        check_choice("embedding_type", embedding_type, EMBEDDING_TYPES)
        num_classes = check_int("num_classes", num_classes, 0)  # 0: unconditional
        self.embedding_type, self.base_dim, self.num_classes = embedding_type, base_dim, num_classes
        self.fourier = GaussianFourierProjection(base_dim, fourier_scale) if embedding_type == "fourier" else None
        in_dim = 2 * base_dim if embedding_type == "fourier" else base_dim
        self.dense_0 = dense(in_dim, out_dim)
        self.dense_1 = dense(out_dim, out_dim)
        # rows 0..num_classes-1 are the classes, row num_classes the null label (classifier-free guidance)
        self.class_embed = nn.Embedding(num_classes + 1, out_dim) if num_classes > 0 else None
        self._checked = None  # (weakref to the last labels tensor checked, its version): see _class_term

    def forward(self, noise_label: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.fourier is not None:
            emb = self.fourier(torch.log(noise_label))
        else:
            emb = get_timestep_embedding(noise_label, self.base_dim)
        emb = self.dense_1(F.silu(self.dense_0(emb.to(self.dense_0.weight.dtype))))
        return emb + self._class_term(cond, emb.shape[0])

    def _class_term(self, cond: torch.Tensor | None, batch: int):
        if self.class_embed is None:
            if cond is not None:
                raise ValueError("cond was given but the network is unconditional (num_classes=0)")
            return 0.0
        if not torch.is_tensor(cond) or cond.shape != (batch,):
            shape = tuple(cond.shape) if torch.is_tensor(cond) else cond
            raise ValueError(f"cond must be class labels of shape ({batch},) when num_classes > 0, got {shape}")
        if not self._seen(cond):
            check_labels(cond, self.num_classes, allow_null=True)
            self._checked = (weakref.ref(cond), cond._version)
        return self.class_embed(cond.long())

    def _seen(self, cond: torch.Tensor) -> bool:
        """Whether this very labels tensor, unmodified since, was checked last time. A sampler passes the
        same labels at every step, so on an accelerator the range check costs one host sync per sampler
        call (and one per training step, whose labels are new); on a CPU it never waits on a device.
        Under ``torch.compile`` the check is a device assertion (``torch._assert_async``) instead."""
        if torch.compiler.is_compiling():
            torch._assert_async(((cond >= 0) & (cond <= self.num_classes)).all(),
                                "cond holds a label outside [0, num_classes]")
            return True
        return self._checked is not None and self._checked[0]() is cond and self._checked[1] == cond._version

    def __getstate__(self):
        """Pickling and ``copy.deepcopy`` drop the memo of the last labels checked (a weak reference)."""
        return {**self.__dict__, "_checked": None}


# ----------------------------------------------------------------------------------------------------
# FIR resampling (StyleGAN2), pure PyTorch
# ----------------------------------------------------------------------------------------------------

def setup_kernel(k: Sequence[float], device=None, dtype=None) -> torch.Tensor:
    """A 1-D (separable, outer product) or 2-D FIR kernel, normalised to sum to one."""
    k = torch.as_tensor(k, dtype=torch.float64)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"fir_kernel must be 1-D or square 2-D, got shape {tuple(k.shape)}")
    return (k / k.sum()).to(device=device, dtype=dtype or torch.float32)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insert upsample by ``up``, pad (negative crops), convolve with ``kernel``, keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).to(x)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample_2d(x: torch.Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """FIR upsampling; ``k = (1,) * factor`` is nearest-neighbour upsampling."""
    kernel = setup_kernel(k, x.device) * factor ** 2
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """FIR downsampling; ``k = (1,) * factor`` is average pooling."""
    kernel = setup_kernel(k, x.device)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.avg_pool2d(x, factor, stride=factor)


def upsample_conv_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] = (1, 3, 3, 1),
                     factor: int = 2) -> torch.Tensor:
    """Fused FIR upsampling and ``w`` convolution (StyleGAN2): a strided transposed conv, then the FIR filter."""
    kernel = setup_kernel(k, x.device) * factor ** 2
    conv_k = w.shape[-1]
    p = (kernel.shape[0] - factor) - (conv_k - 1)
    w_t = torch.flip(w, (2, 3)).transpose(0, 1)
    x = F.conv_transpose2d(x, w_t, stride=factor)
    return upfirdn2d(x, kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] = (1, 3, 3, 1),
                       factor: int = 2) -> torch.Tensor:
    """Fused ``w`` convolution and FIR downsampling (StyleGAN2): the FIR filter, then a strided conv."""
    kernel = setup_kernel(k, x.device)
    p = (kernel.shape[0] - factor) + (w.shape[-1] - 1)
    x = upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor)


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR up- or downsampling by 2 (StyleGAN2's ``Conv2d(up=..., down=...)``)."""

    def __init__(self, in_ch: int, out_ch: int, up: bool = False, down: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), kernel: int = 3):
        super().__init__()
        if up == down:
            raise ValueError("FIRConv2d needs exactly one of up=True or down=True")
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.fir_kernel = up, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        resample = upsample_conv_2d if self.up else conv_downsample_2d
        return resample(x, self.weight, self.fir_kernel) + self.bias[None, :, None, None]


class _Resample(nn.Module):
    """Shared set-up of :class:`Upsample` / :class:`Downsample`: an optional convolution, FIR or not.

    ``forward(x, temb=None)``: ``temb`` is unused; it is accepted so every resampling block shares the
    ``(x, temb)`` signature of the residual blocks.
    """

    up: bool

    def __init__(self, in_ch: int, out_ch: int | None = None, with_conv: bool = False, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError(f"{type(self).__name__} without a convolution cannot change the channel count")
        self.fir, self.fir_kernel = fir, tuple(fir_kernel)
        self.conv = None
        if with_conv and fir:
            self.conv = FIRConv2d(in_ch, out_ch, up=self.up, down=not self.up, fir_kernel=fir_kernel)
        elif with_conv:
            self.conv = conv2d(in_ch, out_ch) if self.up else conv2d(in_ch, out_ch, stride=2, padding=0)


class Upsample(_Resample):
    """2x upsampling: nearest or FIR, optionally followed (or fused) with a 3x3 convolution."""

    up = True

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else upsample_2d(x, self.fir_kernel)
        h = naive_upsample_2d(x)
        return self.conv(h) if self.conv is not None else h


class Downsample(_Resample):
    """2x downsampling: average pool or FIR, optionally with (or fused with) a 3x3 convolution."""

    up = False

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        if self.fir:
            return self.conv(x) if self.conv is not None else downsample_2d(x, self.fir_kernel)
        if self.conv is None:
            return naive_downsample_2d(x)
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # TF 'SAME' padding for a stride-2 3x3 conv


# ----------------------------------------------------------------------------------------------------
# Residual, attention and combine blocks
# ----------------------------------------------------------------------------------------------------

class AttnBlock(nn.Module):
    """Single-head self-attention over pixels (DDPM), with an optional sqrt(2) skip rescale."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.ModuleList([conv2d(channels, channels, 1, init_scale=0.1) for _ in range(3)])
        self.proj_out = conv2d(channels, channels, 1, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        # one head over the H*W pixels, channels as features: softmax(q k^T / sqrt(C)) v
        q, k, v = (layer(h).reshape(b, c, hgt * wid).transpose(1, 2) for layer in self.qkv)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, hgt, wid)
        return skip_add(x, self.proj_out(h), self.skip_rescale)


class _ResnetBlockBase(nn.Module):
    """GroupNorm-SiLU-conv, plus a per-channel bias from the noise embedding, GroupNorm-SiLU-dropout-conv."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float, skip_rescale: bool,
                 init_scale: float):
        super().__init__()
        self.norm_0 = group_norm(in_ch)
        self.conv_0 = conv2d(in_ch, out_ch)
        self.dense_0 = dense(temb_dim, out_ch) if temb_dim is not None else None
        self.norm_1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = conv2d(out_ch, out_ch, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def _add_temb(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if temb is None or self.dense_0 is None:
            return h
        return h + self.dense_0(F.silu(temb))[:, :, None, None]

    def _second_half(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv_1(self.dropout(F.silu(self.norm_1(h))))


class ResnetBlockDDPM(_ResnetBlockBase):
    """DDPM residual block (``resblock_type="ddpm"``); a 1x1 shortcut when channels change."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, dropout: float = 0.1,
                 skip_rescale: bool = False, init_scale: float = 0.0):
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        self.shortcut = conv2d(in_ch, out_ch, 1, init_scale=0.1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_0(F.silu(self.norm_0(x)))
        h = self._second_half(self._add_temb(h, temb))
        x = self.shortcut(x) if self.shortcut is not None else x
        return skip_add(x, h, self.skip_rescale)


class ResnetBlockBigGAN(_ResnetBlockBase):
    """BigGAN-style residual block (``resblock_type="biggan"``) that can itself up- or downsample by 2."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, up: bool = False,
                 down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True, init_scale: float = 0.0):
        out_ch = out_ch or in_ch
        super().__init__(in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        if up and down:
            raise ValueError("ResnetBlockBigGAN cannot both upsample and downsample")
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.shortcut = conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or up or down) else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(F.silu(self.norm_0(x)))
        x = self._resample(x)
        h = self._second_half(self._add_temb(self.conv_0(h), temb))
        x = self.shortcut(x) if self.shortcut is not None else x
        return skip_add(x, h, self.skip_rescale)


class Combine(nn.Module):
    """Merge an input-pyramid image into the feature map: 1x1 conv, then sum or concatenate (NCSN++)."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        check_choice("progressive_combine", method, ("sum", "cat"))
        self.conv = conv2d(dim1, dim2, 1)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y
