"""Exponential moving average of a network's weights, held in its own copy of the network (as in EDM
and k-diffusion): evaluation and sampling run ``ema.module``; the training network is never swapped.

    ema = ExponentialMovingAverage(model, decay=0.9999)
    ...; optimizer.step(); ema.update(model)
    score_fn = get_score_fn(sde, ema.module)

Why not ``torch.optim.swa_utils.AveragedModel``: it has no decay warm-up, and its state dict
(``module.``-prefixed names plus ``n_averaged``) would change the checkpoint format; this class keeps
score_sde's warm-up and the ``{"decay", "num_updates", "shadow"}`` state that checkpoints hold.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn as nn


def _tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` by name (parameters and buffers share one namespace)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _some(names: list, k: int = 3) -> str:
    """The first ``k`` names as a list, with the total when there are more."""
    return str(names[:k])[:-1] + (f", ...] ({len(names)} in all)" if len(names) > k else "]")


class ExponentialMovingAverage:
    """``s <- d s + (1 - d) p`` for the trainable floating-point parameters, ``d = decay``; buffers and
    frozen parameters are copied.

    With ``use_num_updates=True`` the decay warms up as ``d_n = min(decay, (1 + n) / (10 + n))`` on the
    n-th update (n = 1, 2, ...), as in TensorFlow's ``ExponentialMovingAverage`` and score_sde.
    ``module`` is a deep copy of the network made at construction (same device, dtype and memory
    format), in eval mode, without gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_updates: bool = True):
        if isinstance(decay, bool) or not (isinstance(decay, (int, float)) and 0.0 <= decay <= 1.0):
            raise ValueError(f"decay must be in [0, 1], got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0 if use_num_updates else None
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._trainable = {name for name, p in model.named_parameters() if p.requires_grad}

    def _pairs(self, model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """``(name, average, current)`` for every tensor; the networks must match by name and shape."""
        mine, theirs = _tensors(self.module), _tensors(model)
        if mine.keys() != theirs.keys():
            missing, extra = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
            raise ValueError(f"model does not match the EMA: missing {missing}, unexpected {extra}")
        return [(name, mine[name], theirs[name]) for name in mine]

    def current_decay(self) -> float:
        """The decay the next ``update`` will use."""
        if self.num_updates is None:
            return self.decay
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (the plain network, not a DDP wrapper)."""
        decay = self.current_decay()
        if self.num_updates is not None:
            self.num_updates += 1
        averaged, current, copied = [], [], []
        for name, mine, theirs in self._pairs(model):
            if name in self._trainable and mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs.detach())
            else:
                copied.append((mine, theirs))
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in copied:
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {name: t.detach().clone() for name, t in _tensors(self.module).items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Strict load: the names and shapes must match exactly, else ``ValueError``."""
        if not isinstance(state, dict) or set(state) != {"decay", "num_updates", "shadow"}:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"EMA state must have keys ['decay', 'num_updates', 'shadow'], got {got}")
        shadow, mine = state["shadow"], _tensors(self.module)
        if shadow.keys() != mine.keys():
            missing, extra = sorted(mine.keys() - shadow.keys()), sorted(shadow.keys() - mine.keys())
            raise ValueError(f"EMA state does not match the network: missing {_some(missing)}, "
                             f"unexpected {_some(extra)}")
        for name, value in shadow.items():
            if value.shape != mine[name].shape:
                raise ValueError(f"EMA state {name!r} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(mine[name].shape)}")
        for name, value in shadow.items():
            mine[name].copy_(value)
        self.decay, self.num_updates = float(state["decay"]), state["num_updates"]
