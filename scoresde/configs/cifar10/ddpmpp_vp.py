"""DDPM++ cont. (VP) on CIFAR-10 (score_sde configs/vp/cifar10_ddpmpp_continuous.py).
For the deep variant add ``--config.model.num_res_blocks=8``."""
from scoresde.configs.cifar10.base import get_ddpmpp_config


def get_config():
    return get_ddpmpp_config("vpsde")
