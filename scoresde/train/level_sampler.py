"""Importance sampling of the chain's levels for the ``vlb`` loss (Nichol & Dhariwal 2021, Sec. 3.3):
``p_i ∝ sqrt(E[L_i^2])`` from the last ``history`` values of each level's term, uniform until every
level has them all; the loss is weighted by ``1 / (N p_i)`` so its expectation stays ``L_vlb / N``.

The history is training state: ``state_dict`` / ``load_state_dict`` carry it through checkpoints, so a
resumed run draws exactly the levels the uninterrupted one would have.
"""
from __future__ import annotations

import torch

from scoresde.utils import check_float, check_int

F64 = torch.float64


class LevelSampler:
    """Loss-aware sampler of levels ``0..N-1`` (their ``LossSecondMomentResampler``)."""

    def __init__(self, N: int, history: int = 10, uniform_prob: float = 0.001):
        self.N = check_int("N", N, minimum=1)
        self.history = check_int("history", history, minimum=1)
        self.uniform_prob = check_float("uniform_prob", uniform_prob, 0.0, 1.0)
        self.values = torch.zeros(self.N, self.history, dtype=F64)   # the last terms of each level
        self.counts = torch.zeros(self.N, dtype=torch.long)           # how many of them are filled

    @property
    def warmed_up(self) -> bool:
        """Whether every level holds ``history`` terms (before that, levels are drawn uniformly)."""
        return bool((self.counts == self.history).all())

    def probabilities(self) -> torch.Tensor:
        """``p_i`` (float64, ``(N,)``): uniform until warmed up, then ``sqrt(mean L_i^2)`` normalised and
        mixed with ``uniform_prob`` of the uniform distribution."""
        if not self.warmed_up:
            return torch.full((self.N,), 1.0 / self.N, dtype=F64)
        w = self.values.pow(2).mean(dim=1).sqrt()
        p = w / w.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / self.N

    def draw(self, n: int, generator: torch.Generator | None = None, device=None,
             dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` levels ``i ~ p`` and their weights ``1 / (N p_i)``."""
        p = self.probabilities()
        gen_device = generator.device if generator is not None else "cpu"
        u = torch.rand(n, generator=generator, dtype=F64, device=gen_device).cpu()
        index = torch.searchsorted(torch.cumsum(p, 0), u, right=True).clamp(max=self.N - 1)
        weight = 1.0 / (self.N * p[index])
        return index.to(device), weight.to(device=device, dtype=dtype)

    def update(self, index: torch.Tensor, terms: torch.Tensor) -> None:
        """Record the (unweighted) terms ``L_i`` of a batch at its levels ``index``, in batch order: a
        full level drops its oldest value."""
        for i, value in zip(index.detach().cpu().tolist(), terms.detach().to(F64).cpu().tolist()):
            if self.counts[i] == self.history:
                self.values[i, :-1] = self.values[i, 1:].clone()
                self.values[i, -1] = value
            else:
                self.values[i, self.counts[i]] = value
                self.counts[i] += 1

    def state_dict(self) -> dict:
        return {"values": self.values.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"values", "counts"} or tuple(state["values"].shape) != (self.N, self.history):
            raise ValueError(f"level sampler state must hold values ({self.N}, {self.history}) and counts "
                             f"({self.N},), got keys {sorted(state)}")
        self.values = state["values"].to(F64).clone()
        self.counts = state["counts"].long().clone()
