"""CIFAR-10 settings shared by the paper's continuous-time models (Song et al. 2021, App. H;
score_sde's configs/default_cifar10_configs.py): batch 128, 1.3M iterations, Adam lr 2e-4 with a
5000-step warm-up, gradient clipping at 1, random flips, beta 0.1..20, sigma 0.01..50, N = 1000,
NCSN++ / DDPM++ with nf 128, ch_mult (1, 2, 2, 2), 4 residual blocks per level, attention at 16x16,
dropout 0.1."""
import ml_collections

from scoresde.configs.default import set_unet, get_default_config, use_ddpmpp


def get_cifar10_config(sde: str) -> ml_collections.ConfigDict:
    config = get_default_config()
    data = config.data
    data.dataset = "cifar10"
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False

    training = config.training
    training.sde = sde
    training.batch_size = 128
    training.n_iters = 1_300_001
    training.log_freq = 50
    training.eval_freq = 100
    training.checkpoint_freq = 10_000   # score_sde: snapshot_freq_for_preemption
    training.snapshot_freq = 50_000
    training.reduce_mean = False

    model = config.model
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.num_scales = 1000
    set_unet(model, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,), dropout=0.1)

    optim = config.optim
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.sampling.snr = 0.16
    config.sampling.n_steps = 1
    config.sampling.denoise = True
    config.eval.batch_size = 256
    config.eval.num_samples = 10_000       # the whole test split for bits/dim
    config.eval.trace = "rademacher"
    return config


def get_ddpmpp_config(sde: str) -> ml_collections.ConfigDict:
    """DDPM++ cont.: VP / sub-VP, centred data, mean-reduced loss, EMA 0.9999, Euler-Maruyama sampling."""
    config = get_cifar10_config(sde)
    config.data.centered = True
    config.training.reduce_mean = True
    use_ddpmpp(config.model)
    config.model.ema_rate = 0.9999
    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.snr = 0.01                    # used only if a corrector is switched on
    return config
