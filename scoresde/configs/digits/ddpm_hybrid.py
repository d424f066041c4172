"""Tiny DDPM++ on 8x8 digits as Improved DDPM (Nichol & Dhariwal 2021): the cosine schedule's chain of
N = 1000 levels, discrete-time labels, a learned reverse variance (``model.learn_variance``: the U-Net
outputs eps and v) trained by the hybrid loss ``L_simple + 0.001 L_vlb``, and ancestral sampling on the
chain respaced to ``sampling.steps`` levels. Its eval reports the variational bound with the learned
variance (``eval.bounds``: ``vlb``, ``iw``). The fixed-variance counterpart is the same config with
``--config.model.learn_variance=False --config.training.loss=ddpm``."""
from scoresde.configs.default import use_ddpmpp
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("cosine_vpsde")
    config.data.centered = True
    use_ddpmpp(config.model)
    config.model.num_scales = 1000
    config.model.learn_variance = True
    config.training.loss = "hybrid"
    config.training.vlb_weight = 0.001
    config.training.continuous = False
    config.sampling.method = "ddpm"
    config.sampling.steps = 100      # kept levels of the 1000-level chain (Nichol & Dhariwal, Sec. 4)
    config.eval.bounds = "vlb"       # the VLB over all N levels with the learned variance
    return config
