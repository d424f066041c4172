"""Tiny DDPM++ on 8x8 digits with the VP SDE (centred data, positional embedding of 999 t)."""
from scoresde.configs.default import use_ddpmpp
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("vpsde")
    config.data.centered = True
    use_ddpmpp(config.model)
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    return config
