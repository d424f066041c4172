"""DDPM++ cont. (sub-VP) on CIFAR-10 (score_sde configs/subvp/cifar10_ddpmpp_continuous.py).
For the deep variant add ``--config.model.num_res_blocks=8 --config.training.n_iters=950001``."""
from scoresde.configs.cifar10.base import get_ddpmpp_config


def get_config():
    return get_ddpmpp_config("subvpsde")
