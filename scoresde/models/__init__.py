"""Networks (registered by name) and the score parameterisation that turns them into ``score_fn(x, t)``."""
# Explicit imports register the networks: mlp (vector data), ddpmpp / ncsnpp (U-Nets of Song et al. 2021),
# classifier_mlp / classifier_unet (noise-conditional classifiers for guidance)
from scoresde.models import classifier, mlp, unet  # noqa: F401  (registration)
from scoresde.models.autoencoder import (DiffusersAutoencoder, KLAutoencoder, load_autoencoder,
                                         measure_scale_factor, save_autoencoder)
from scoresde.models.classifier import classifier_loss, get_logits_fn
# diffusers models; diffusers itself is imported only when these run
from scoresde.models.diffusers_interop import (diffusers_times, from_diffusers, load_diffusers_dir,
                                      to_diffusers_scheduler_config)
from scoresde.models.ema import ExponentialMovingAverage
from scoresde.models.layers import check_labels, null_label
from scoresde.models.registry import MODELS, get_model
from scoresde.models.score_sde_import import from_score_sde, load_score_sde_checkpoint, unet_kwargs_from_score_sde_config
from scoresde.models.utils import PARAMETERIZATIONS, get_model_fn, get_score_fn, get_variance_fn, learns_variance

__all__ = ["get_score_fn", "get_variance_fn", "learns_variance", "get_model_fn", "get_model", "MODELS", "ExponentialMovingAverage", "PARAMETERIZATIONS",
           "null_label", "check_labels", "get_logits_fn", "classifier_loss",
           "load_score_sde_checkpoint", "unet_kwargs_from_score_sde_config", "from_score_sde",
           "from_diffusers", "load_diffusers_dir", "to_diffusers_scheduler_config", "diffusers_times",
           "KLAutoencoder", "DiffusersAutoencoder", "load_autoencoder", "save_autoencoder", "measure_scale_factor"]
