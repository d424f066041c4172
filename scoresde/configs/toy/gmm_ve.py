"""8-mode Gaussian mixture, VE SDE: sigma_max about the largest distance between data points
(Song & Ermon 2020, technique 1), score output scaled by 1/sigma, reverse-diffusion + Langevin."""
from scoresde.configs.default import use_ve_pc_sampling
from scoresde.configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("gmm", "vesde")
    config.model.sigma_min = 0.01
    config.model.sigma_max = 5.0
    config.model.scale_by_sigma = True
    use_ve_pc_sampling(config.sampling)
    return config
