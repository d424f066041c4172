"""The base stage of a CIFAR-10 cascade (Ho et al. 2022): DDPM++ cont. (VP) on the images average-pooled
to 16x16 in model space (``data.resolution``), three levels (16, 8, 4) with attention at 8x8. Written for
a GPU; not run here. ``cascade_sr32.py`` super-resolves its samples to 32x32:

    --mode sample --config configs/cifar10/cascade_sr32.py --workdir SR --config.sampling.cascade=BASE,SR
"""
from scoresde.configs.cifar10.base import get_ddpmpp_config
from scoresde.configs.default import set_unet


def get_config():
    config = get_ddpmpp_config("vpsde")
    config.data.resolution = 16
    set_unet(config.model, nf=128, ch_mult=(1, 2, 2), num_res_blocks=4, attn_resolutions=(8,), dropout=0.1)
    config.training.n_iters = 400_001
    config.training.snapshot_freq = 50_000
    sampling = config.sampling
    sampling.method = "fast"               # DPM-Solver++ (2M)
    sampling.steps = 30
    sampling.batch_size = 256
    return config
