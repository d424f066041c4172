"""8-mode Gaussian mixture, VP SDE: the README's main job. Samples come from the stochastic DPM-Solver++
(2M, 50 steps: as many samples on the data's support as the 1 000-step predictor-corrector sampler, in
1/20 of its evaluations; ``--config.sampling.method=pc`` gives the latter)."""
from scoresde.configs.toy.base import get_toy_config


def get_config():
    config = get_toy_config("gmm", "vpsde")
    sampling = config.sampling
    sampling.method = "fast"
    sampling.solver = "sde-dpmsolver++"
    sampling.order = 2
    sampling.steps = 50
    return config
