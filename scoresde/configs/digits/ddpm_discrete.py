"""Tiny DDPM++ on 8x8 digits as DDPM itself (Ho et al. 2020): the VP chain of N = 1000 levels with
DDPM's betas (linspace(1e-4, 0.02)), discrete-time labels (the level index), the L_simple loss and
ancestral sampling. Its eval reports DDPM's variational bound (``eval.bounds``: ``vlb``, ``iw``)."""
from scoresde.configs.default import use_ddpmpp
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("vpsde")
    config.data.centered = True
    use_ddpmpp(config.model)
    config.model.num_scales = 1000
    config.training.loss = "ddpm"
    config.training.continuous = False
    config.sampling.predictor = "ancestral_sampling"
    config.sampling.corrector = "none"
    config.eval.bounds = "vlb,iw"   # DDPM's VLB and IW_1, IW_4 on the first 100 test digits: minutes on a CPU
    config.eval.iw_k = (1, 4)       # (1, 10, 100) on a GPU: 100 forward paths of 1000 levels per item
    return config
