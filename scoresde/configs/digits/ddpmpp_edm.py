"""Tiny DDPM++ on 8x8 digits with EDM (Karras et al. 2022): sigma in [0.002, 80], EDM's preconditioning
with sigma_data 0.5 (centred data), its loss, a Fourier embedding of log sigma (EDM's c_noise = ln(sigma)/4
up to scale), and the Heun sampler (18 steps, 35 NFE)."""
from scoresde.configs.default import use_ddpmpp, use_edm
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("edm")
    config.data.centered = True
    use_ddpmpp(config.model)
    config.model.embedding_type = "fourier"
    use_edm(config, sigma_data=0.5)
    return config
