"""NCSN++ cont. (VE) on CIFAR-10 (score_sde configs/ve/cifar10_ncsnpp_continuous.py): data in [0, 1],
Fourier embedding of log sigma, FIR resampling, residual input pyramid, output scaled by 1/sigma,
EMA 0.999, reverse-diffusion predictor + Langevin corrector at snr 0.16.
For the deep variant add ``--config.model.num_res_blocks=8``."""
from scoresde.configs.cifar10.base import get_cifar10_config
from scoresde.configs.default import use_ncsnpp, use_ve_pc_sampling


def get_config():
    config = get_cifar10_config("vesde")
    config.data.centered = False
    use_ncsnpp(config.model)
    config.model.ema_rate = 0.999
    use_ve_pc_sampling(config.sampling)
    return config
