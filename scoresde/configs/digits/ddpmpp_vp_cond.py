"""Class-conditional DDPM++ on 8x8 digits (VP SDE) trained with label dropout (Ho & Salimans 2022):
one network gives the score of ``p_t(x | y)`` and, with the null label, of ``p_t(x)``, so it samples
with classifier-free guidance. ``--mode sample`` draws a 10 x 10 grid, one row per digit, with
classifier-free guidance at ``sampling.guidance_scale`` and DPM-Solver++ (2M, 10 steps)."""
from scoresde.configs.digits.ddpmpp_vp import get_config as get_unconditional_config


def get_config():
    config = get_unconditional_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1    # Ho & Salimans use 0.1-0.2
    config.training.n_iters = 6000
    config.training.snapshot_freq = 6000
    config.training.snapshot_num_samples = 40
    sampling = config.sampling
    sampling.method = "fast"
    sampling.steps = 10
    sampling.label = "all"
    sampling.guidance = "cfg"
    sampling.guidance_scale = 2.0
    sampling.num_samples = 100
    sampling.batch_size = 100
    return config
