"""Tiny DDPM++ on 8x8 digits trained by flow matching on the linear path (rectified flow): centred data,
velocity output, positional embedding of 999 t / T, DPM-Solver++(3M) sampling."""
from scoresde.configs.default import use_ddpmpp
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("rectified_flow")
    config.data.centered = True
    use_ddpmpp(config.model)
    config.model.parameterization = "velocity"
    config.training.loss = "flow"
    s = config.sampling
    s.method, s.steps, s.order = "fast", 20, 3
    return config
