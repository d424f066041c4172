"""Small helpers shared by every layer of the toolkit: a name registry, rank-agnostic broadcasting and
the one set of argument checks (``check_int``, ``check_float``, ``check_positive``, ``check_choice``,
``check_finite``), each raising ``ValueError("<name> must be ..., got <value>")``."""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
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

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what it held (an unknown name raises like ``get``)."""
        item = self.get(name)
        del self._items[name]
        return item

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


def check_choice(name: str, value, allowed: Iterable):
    """``value`` if it is one of ``allowed``, else ``ValueError`` naming the argument and the allowed values."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_int(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) ``>= minimum``, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_float(name: str, value, low: float = -math.inf, high: float = math.inf, *,
                open_low: bool = False, open_high: bool = False) -> float:
    """``value`` as a ``float`` if it is a finite real number (not a bool) in the interval from ``low`` to
    ``high`` (ends closed unless ``open_low`` / ``open_high``; infinite ends are always open), else
    ``ValueError("<name> must be a number in (0.0, inf), got -1")``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        left = "(" if open_low or low == -math.inf else "["
        right = ")" if open_high or high == math.inf else "]"
        raise ValueError(f"{name} must be a number in {left}{float(low)}, {float(high)}{right}, got {value!r}")
    return float(value)


def check_positive(name: str, value) -> float:
    """``value`` as a ``float`` if it is a finite number ``> 0``, else ``ValueError``."""
    return check_float(name, value, 0.0, open_low=True)


def check_finite(name: str, x: torch.Tensor) -> None:
    """``ValueError`` when the tensor ``x`` holds NaN or infinite values (one host sync)."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def save_atomic(obj, path) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder and a rename: a reader sees
    the old file or the whole new one, never a torn write."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
