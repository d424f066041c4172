"""8-mode Gaussian mixture, sub-VP SDE."""
from scoresde.configs.toy.base import get_toy_config


def get_config():
    return get_toy_config("gmm", "subvpsde")
