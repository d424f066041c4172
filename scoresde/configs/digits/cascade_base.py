"""The base stage of a two-stage cascade on digits (Ho et al. 2022): DDPM++ (VP SDE) on the digits
average-pooled to 4x4 in model space (``data.resolution``). ``cascade_sr.py`` super-resolves its samples
to 8x8; ``docs/cascades.md`` has the commands and the measured numbers."""
from scoresde.configs.default import set_unet
from scoresde.configs.digits.ddpmpp_vp import get_config as get_pixel_config


def get_config():
    config = get_pixel_config()
    config.data.resolution = 4
    set_unet(config.model, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,), dropout=0.1)
    config.training.n_iters = 2000
    config.training.snapshot_freq = 2000
    sampling = config.sampling
    sampling.method = "fast"           # DPM-Solver++ (2M)
    sampling.steps = 20
    return config
