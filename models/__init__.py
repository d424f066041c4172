"""Networks (registered by name) and the score parameterisation that turns them into ``score_fn(x, t)``."""
# Explicit imports register the networks: mlp (vector data), ddpmpp / ncsnpp (U-Nets of Song et al. 2021)
from models import mlp, unet  # noqa: F401  (registration)
from models.ema import ExponentialMovingAverage
from models.registry import MODELS, get_model
from models.utils import PARAMETERIZATIONS, get_model_fn, get_score_fn

__all__ = ["get_score_fn", "get_model_fn", "get_model", "MODELS", "ExponentialMovingAverage", "PARAMETERIZATIONS"]
