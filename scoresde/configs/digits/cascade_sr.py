"""The super-resolution stage of a two-stage cascade on digits (Ho et al. 2022): DDPM++ (VP SDE) on 8x8
digits conditioned on their 4x4 average-pooled view (``model.cond_channels``, ``data.low_res``), with
noise-conditioning augmentation (the condition noised to a level s ~ U[0, 0.5] of the VP process in
training; s = ``sampling.cond_noise`` when sampling) and condition dropout (for classifier-free guidance).

    --mode sample --config.sampling.cascade=BASE_WORKDIR,SR_WORKDIR   # base samples, super-resolved
    --mode sample --config.sampling.low_res_from=heldout              # held-out low-res digits, super-resolved
"""
from scoresde.configs.digits.ddpmpp_vp import get_config as get_pixel_config


def get_config():
    config = get_pixel_config()
    config.model.cond_channels = 1
    config.data.low_res = 4
    config.training.cond_noise_max = 0.5
    config.training.label_dropout = 0.1    # condition dropout: the null condition's score for guidance
    config.training.n_iters = 2000
    config.training.snapshot_freq = 2000
    sampling = config.sampling
    sampling.method = "fast"               # DPM-Solver++ (2M)
    sampling.steps = 20
    sampling.cond_noise = 0.1
    return config
