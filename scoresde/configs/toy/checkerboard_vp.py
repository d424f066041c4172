"""Checkerboard (uniform on 8 cells of a 4x4 board over [-2, 2]^2), VP SDE. The sharp cell edges need
more updates than the mixture's smooth modes."""
from scoresde.configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("checkerboard", "vpsde")
    config.training.n_iters = 10_000
    config.training.snapshot_freq = 10_000
    return config
