"""8-mode Gaussian mixture with EDM (Karras et al. 2022): x_t = x_0 + sigma z with sigma(t) = t in
[0.002, 80], EDM's preconditioning and loss (log-normal sigma), and its Heun sampler (18 steps, 35 NFE).
``sigma_data`` is the data's standard deviation per coordinate (points on a circle of radius 2: about 1.4)."""
from scoresde.configs.default import use_edm
from scoresde.configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("gmm", "edm")
    config.training.likelihood_weighting = config.training.importance_sampling = False
    use_edm(config, sigma_data=1.4)
    return config
