"""8-mode Gaussian mixture, flow matching on the linear path x_t = (1 - t) x_0 + t z (rectified flow,
Lipman et al. 2023; Liu et al. 2023): velocity-predicting MLP, DPM-Solver++(3M) sampling."""
from scoresde.configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("gmm", "rectified_flow")
    t = config.training
    t.loss = "flow"
    t.likelihood_weighting = t.importance_sampling = False      # flow matching weighs every t alike
    config.model.parameterization = "velocity"
    s = config.sampling
    s.method, s.steps, s.order = "fast", 15, 3
    return config
