"""Exponential moving average of a model's parameters (Polyak averaging; Song et al. 2021 use decay 0.9999).

Trainable parameters are averaged; buffers and frozen parameters are copied as they are.
Typical use::

    ema = ExponentialMovingAverage(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)
    ema.store(model); ema.copy_to(model); evaluate(model); ema.restore(model)
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn


def _tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name (parameters and buffers share one namespace)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


class ExponentialMovingAverage:
    """Shadow copies ``s <- d s + (1 - d) p`` of the trainable parameters, ``d = decay``.

    With ``use_num_updates=True`` the decay warms up as ``d_n = min(decay, (1 + n) / (10 + n))`` on the
    n-th update (n = 1, 2, ...), as in TensorFlow's ``ExponentialMovingAverage`` and score_sde.
    Shadows live on the model's device and dtype and follow it if the model is moved.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        if not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0 if use_num_updates else None
        self.shadow = {name: t.detach().clone() for name, t in _tensors(model).items()}
        self._trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        self._stored: Dict[str, torch.Tensor] | None = None

    def _matched(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        tensors = _tensors(model)
        if tensors.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - tensors.keys()), sorted(tensors.keys() - self.shadow.keys())
            raise ValueError(f"model does not match the EMA: missing {missing}, unexpected {extra}")
        return tensors

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if self.num_updates is None:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards the model's current parameters; buffers are copied."""
        decay = self.current_decay()
        if self.num_updates is not None:
            self.num_updates += 1
        for name, t in self._matched(model).items():
            s = self.shadow[name]
            if s.device != t.device or s.dtype != t.dtype:
                s = self.shadow[name] = s.to(device=t.device, dtype=t.dtype)
            if name in self._trainable and t.is_floating_point():
                s.lerp_(t.detach(), 1.0 - decay)
            else:
                s.copy_(t)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters and buffers with the EMA values."""
        for name, t in self._matched(model).items():
            t.copy_(self.shadow[name])

    @torch.no_grad()
    def store(self, model: nn.Module) -> None:
        """Save the model's current values, to be put back by :meth:`restore` (e.g. around an EMA evaluation)."""
        self._stored = {name: t.detach().clone() for name, t in self._matched(model).items()}

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put back the values saved by :meth:`store`."""
        if self._stored is None:
            raise ValueError("restore called without a preceding store")
        for name, t in self._matched(model).items():
            t.copy_(self._stored[name])
        self._stored = None

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {name: s.clone() for name, s in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Strict load: the shadow names and shapes must match exactly, else ``ValueError``."""
        if set(state) != {"decay", "num_updates", "shadow"}:
            raise ValueError(f"EMA state must have keys ['decay', 'num_updates', 'shadow'], got {sorted(state)}")
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            missing, extra = sorted(self.shadow.keys() - shadow.keys()), sorted(shadow.keys() - self.shadow.keys())
            raise ValueError(f"EMA state does not match: missing {missing}, unexpected {extra}")
        for name, value in shadow.items():
            if value.shape != self.shadow[name].shape:
                raise ValueError(f"EMA state {name!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(self.shadow[name].shape)}")
        for name, value in shadow.items():
            self.shadow[name].copy_(value)
        self.decay, self.num_updates = float(state["decay"]), state["num_updates"]
