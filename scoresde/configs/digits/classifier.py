"""A noise-conditional classifier ``p_phi(y | x_t, t)`` of 8x8 digits on the VP SDE of
``digits/ddpmpp_vp.py`` (Song et al. 2021, App. I.1; Dhariwal & Nichol 2021): the encoder half of the
tiny DDPM++ U-Net with a 10-way head, trained by cross-entropy on ``x_t ~ p_0t(x_t | x_0)``, ``t ~ U(eps, 1)``.
Guide a score model with it: ``--config.sampling.guidance=classifier --config.sampling.classifier_workdir=<this workdir>``."""
from scoresde.configs.digits.ddpmpp_vp import get_config as get_score_config


def get_config():
    config = get_score_config()
    config.model.name = "classifier_unet"
    config.model.num_classes = 10
    config.training.loss = "classifier"
    config.training.snapshot_sampling = False
    return config
