"""The first stage of a latent diffusion model of 8x8 digits: a small KL autoencoder to 2x4x4 latents
(f = 2, 2 channels: 32 numbers for 64 pixels), trained with ``--mode train_autoencoder``:

    python main.py --config configs/digits/autoencoder.py --workdir runs/digits_ae --mode train_autoencoder

It writes ``runs/digits_ae/autoencoder.pt``; ``configs/digits/ldm_vp.py`` trains the latent DDPM++ on it."""
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("vpsde")
    config.data.centered = True
    config.data.uniform_dequantization = True     # the VAE's likelihood is a density of dequantised pixels
    a = config.autoencoder
    a.latent_channels = 2
    a.downsampling = 2
    a.channels = 32
    a.beta = 1.0
    # the loop, EMA and optimiser are digits/base.py's (3 000 steps of 64, lr 1e-3, EMA 0.999) but for
    config.optim.warmup = 100
    config.training.snapshot_num_samples = 32     # 4 rows of held-out digits above their reconstructions
    return config
