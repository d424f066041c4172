"""Residual MLP score network for vector data ``(B, D)`` (toy 2-D densities and similar)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from scoresde.utils import check_int, check_positive

from .layers import NoiseEmbedding
from .registry import MODELS


class ResidualBlock(nn.Module):
    """Pre-norm residual block: ``x + W2 SiLU(W1 SiLU(LN x) + D SiLU(temb))``."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.linear_0 = nn.Linear(hidden, hidden)
        self.temb_proj = nn.Linear(hidden, hidden)
        self.linear_1 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.linear_0(F.silu(self.norm(x))) + self.temb_proj(F.silu(temb))
        return x + self.linear_1(F.silu(h))


@MODELS.register("mlp")
class MLP(nn.Module):
    """Noise-conditional residual MLP: ``forward(x (B, dim), noise_label (B,), cond=None) -> (B, dim)``.

    ``embedding_type="positional"`` embeds the label as is (``999 t`` for VP); ``"fourier"`` embeds
    ``log(label)`` and expects positive sigmas (VE), as NCSN++ does.
    """

    data_rank = 1               # items are vectors (D,)

    def __init__(self, *,
                 dim: int,                      # data dimension D
                 hidden: int,                   # width
                 n_blocks: int,                 # residual blocks
                 embedding_type: str,           # "positional" | "fourier"
                 fourier_scale: float,          # std of the Fourier features
                 num_classes: int = 0,          # class-conditional when > 0
                 learn_variance: bool = False):  # 2 D outputs: eps and the variance interpolation v
        super().__init__()
        dim, hidden = check_int("dim", dim, 1), check_int("hidden", hidden, 1)
        n_blocks = check_int("n_blocks", n_blocks, 0)
        check_positive("fourier_scale", fourier_scale)
        self.dim = dim
        self.embed = NoiseEmbedding(embedding_type, hidden, hidden, fourier_scale, num_classes)
        self.linear_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden) for _ in range(n_blocks)])
        self.norm_out = nn.LayerNorm(hidden)
        # Nichol & Dhariwal 2021, Sec. 3.1: the output doubles to (eps, v) when the variance is learned
        self.learn_variance = bool(learn_variance)
        self.linear_out = nn.Linear(hidden, dim * (2 if self.learn_variance else 1))

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        if noise_label.shape != (x.shape[0],):
            raise ValueError(f"noise_label must have shape ({x.shape[0]},), got {tuple(noise_label.shape)}")
        temb = self.embed(noise_label, cond)
        h = self.linear_in(x)
        for block in self.blocks:
            h = block(h, temb)
        return self.linear_out(F.silu(self.norm_out(h)))
