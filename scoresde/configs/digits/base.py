"""scikit-learn's 8x8 digits (17 grey levels) with a tiny U-Net (two levels, 8x8 and 4x4, attention
at 4x4): trains in minutes on a CPU. Uniform dequantisation in training, as bits/dim assumes."""
import ml_collections

from scoresde.configs.default import set_unet, get_default_config


def get_digits_config(sde: str) -> ml_collections.ConfigDict:
    config = get_default_config()
    data = config.data
    data.dataset = "digits"
    data.uniform_dequantization = True
    data.random_flip = False          # digits are not mirror-symmetric

    training = config.training
    training.sde = sde
    training.batch_size = 64
    training.n_iters = 3000
    training.log_freq = 100
    training.eval_freq = 500
    training.checkpoint_freq = 500
    training.snapshot_freq = 3000
    training.snapshot_num_samples = 36

    model = config.model
    model.ema_rate = 0.999
    set_unet(model, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)

    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 200
    optim.grad_clip = 1.0

    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    evaluate = config.eval
    evaluate.batch_size = 300
    evaluate.num_samples = 300           # the whole test split
    evaluate.trace = "rademacher"
    return config
