"""The 16 -> 32 super-resolution stage of a CIFAR-10 cascade (Ho et al. 2022; Imagen's noise-conditioning
augmentation): DDPM++ cont. (VP) on 32x32 images conditioned on their 16x16 average-pooled view
(``model.cond_channels``, ``data.low_res``), the condition noised in training to a level s ~ U[0, 0.5]
of the VP process and sampled at s = 0.1, with condition dropout 0.1 for classifier-free guidance. Smaller
than the 32x32 pixel model (nf 96, 2 blocks per level): it refines, the base composes. Written for a GPU;
not run here (``cascade_base16.py`` is its base)."""
from scoresde.configs.cifar10.base import get_ddpmpp_config
from scoresde.configs.default import set_unet


def get_config():
    config = get_ddpmpp_config("vpsde")
    config.model.cond_channels = 3
    config.data.low_res = 16
    config.training.cond_noise_max = 0.5
    config.training.label_dropout = 0.1
    set_unet(config.model, nf=96, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1)
    config.training.n_iters = 400_001
    config.training.snapshot_freq = 50_000
    sampling = config.sampling
    sampling.method = "fast"               # DPM-Solver++ (2M)
    sampling.steps = 30
    sampling.batch_size = 256
    sampling.cond_noise = 0.1
    return config
