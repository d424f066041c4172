"""Tiny NCSN++ on 8x8 digits with the VE SDE: data in [0, 1], sigma_max 5 (about the largest distance
between two training images, Song & Ermon 2020, technique 1), output scaled by 1/sigma,
reverse-diffusion predictor + Langevin corrector."""
from scoresde.configs.default import use_ncsnpp, use_ve_pc_sampling
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("vesde")
    config.data.centered = False
    config.model.sigma_min = 0.01
    config.model.sigma_max = 5.0
    use_ncsnpp(config.model)
    use_ve_pc_sampling(config.sampling)
    return config
