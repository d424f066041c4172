"""Name -> network constructor. Networks register themselves in their own module
(``@MODELS.register("mlp")``); ``scoresde/models/__init__.py`` imports those modules explicitly."""
from __future__ import annotations

import torch.nn as nn

from scoresde.utils import Registry

MODELS: Registry = Registry("model")


def get_model(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` from plain keyword arguments (never a config object)."""
    return MODELS.get(name)(**kwargs)
