"""A latent DDPM++ (VP SDE) of 8x8 digits on the 2x4x4 latents of ``configs/digits/autoencoder.py``
(Rombach et al. 2022): train the first stage, then this model on its latents, then sample / evaluate:

    python main.py --config configs/digits/autoencoder.py --workdir runs/digits_ae --mode train_autoencoder
    python main.py --config configs/digits/ldm_vp.py --workdir runs/digits_ldm --mode train
    python main.py --config configs/digits/ldm_vp.py --workdir runs/digits_ldm --mode sample
    python main.py --config configs/digits/ldm_vp.py --workdir runs/digits_ldm --mode eval

``data.first_stage`` points at the first stage's work directory (override it for another one). The
U-Net is ``ddpmpp_vp``'s at the latents' 4x4 and 2x2 resolutions; ``--mode eval`` reports the latent
bound in bits/dim of the pixels (``latent_bpd``)."""
from scoresde.configs.default import use_ddpmpp
from scoresde.configs.digits.base import get_digits_config


def get_config():
    config = get_digits_config("vpsde")
    config.data.centered = True                   # as the first stage was trained
    config.data.uniform_dequantization = False    # latents are encoded once, at the cell centres
    config.data.first_stage = "runs/digits_ae"
    use_ddpmpp(config.model)
    config.model.attn_resolutions = (2,)          # the latents' coarser level
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    return config
