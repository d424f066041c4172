"""8-mode Gaussian mixture, VP SDE."""
from configs.toy.base import get_toy_config


def get_config():
    return get_toy_config("gmm", "vpsde")
