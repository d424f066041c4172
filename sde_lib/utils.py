"""Small helpers shared by every layer of the toolkit: a name registry and rank-agnostic broadcasting."""
from __future__ import annotations

import math
from typing import Dict, Generic, Iterable, TypeVar

import torch

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; an unknown name raises ``ValueError`` listing the valid ones.

    >>> PREDICTORS = Registry("predictor")
    >>> @PREDICTORS.register("euler_maruyama")
    ... def euler_maruyama(...): ...
    >>> PREDICTORS.get("euler_maruyama")
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``; used bare (``register(name, obj)``) or as a decorator."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {sorted(self._items)}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterable[str]:
        return iter(sorted(self._items))


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a per-sample ``(B,)`` tensor broadcasts against ``(B, ...)``."""
    if v.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {v.ndim} dims, more than the target ndim={ndim}")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dim but the first: ``(B, ...) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def check_choice(name: str, value, allowed: Iterable) -> None:
    """Raise ``ValueError`` naming the argument and its allowed values when ``value`` is not one of them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def check_positive(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def check_finite(name: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
