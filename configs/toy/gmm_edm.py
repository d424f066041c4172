"""8-mode Gaussian mixture with EDM (Karras et al. 2022): x_t = x_0 + sigma z with sigma(t) = t in
[0.002, 80], EDM's preconditioning and loss (log-normal sigma), and its Heun sampler (18 steps, 35 NFE).
``sigma_data`` is the data's standard deviation per coordinate (points on a circle of radius 2: about 1.4)."""
from configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("gmm", "edm")
    t = config.training
    t.loss = "edm"
    t.likelihood_weighting = t.importance_sampling = False
    t.eps = 0.002                                             # sigma_min: times are noise levels here
    m = config.model
    m.sigma_min, m.sigma_max, m.sigma_data = 0.002, 80.0, 1.4
    m.parameterization = "edm"
    s = config.sampling
    s.method, s.steps, s.eps = "edm", 18, 0.002
    config.eval.likelihood_eps = 0.002
    return config
