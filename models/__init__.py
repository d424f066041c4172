"""Networks (registered by name) and the score parameterisation that turns them into ``score_fn(x, t)``."""
# Explicit imports register the networks: mlp (vector data), ddpmpp / ncsnpp (U-Nets of Song et al. 2021),
# classifier_mlp / classifier_unet (noise-conditional classifiers for guidance)
from models import classifier, mlp, unet  # noqa: F401  (registration)
from models.classifier import classifier_loss, get_logits_fn
from models.ema import ExponentialMovingAverage
from models.layers import check_labels, null_label
from models.registry import MODELS, get_model
from models.utils import PARAMETERIZATIONS, get_model_fn, get_score_fn

__all__ = ["get_score_fn", "get_model_fn", "get_model", "MODELS", "ExponentialMovingAverage", "PARAMETERIZATIONS",
           "null_label", "check_labels", "get_logits_fn", "classifier_loss"]
