"""The edge where the ml_collections config stops: validation naming the bad field, and the
constructors that turn a config into an SDE, a network, score/loss arguments, data and plain options.
Everything built here takes explicit keyword arguments; nothing downstream sees the config."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

import ml_collections
import torch
from torch import nn

import samplers
from models import PARAMETERIZATIONS, get_model
from sde_lib import SDE, SDES, get_sde
from training.datasets import dataset_names
from training.distributed import DEVICES
from training.losses import LOSSES, get_loss_fn, get_noise_fn
from training.optim import OPTIMIZERS
from training.pipeline import DataSpec, build_data

SAMPLING_METHODS = ("pc", "ode", "fast")
TRACES = ("exact", "gaussian", "rademacher")

# Network constructor argument -> config.model field it is read from (same names), per network.
MLP_FIELDS = ("hidden", "n_blocks", "embedding_type", "fourier_scale")
UNET_FIELDS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type",
               "embedding_type", "fourier_scale", "fir", "fir_kernel", "skip_rescale", "resamp_with_conv",
               "init_scale", "progressive", "progressive_input", "progressive_combine")


@dataclass(frozen=True)
class NetworkSpec:
    data_rank: int          # 1: vector data (B, D); 3: images (B, C, H, W)
    fields: tuple


NETWORKS = {"mlp": NetworkSpec(1, MLP_FIELDS), "ddpmpp": NetworkSpec(3, UNET_FIELDS),
            "ncsnpp": NetworkSpec(3, UNET_FIELDS)}
# SDE constructor argument -> config.model field (only those the chosen SDE's constructor takes are used)
SDE_FIELDS = {"beta_min": "beta_min", "beta_max": "beta_max", "sigma_min": "sigma_min",
              "sigma_max": "sigma_max", "N": "num_scales"}


# ---------------------------------------------------------------------------------------- validation
def get_field(config: ml_collections.ConfigDict, path: str):
    """``config`` at a dotted ``path`` like ``"training.sde"``; a missing field names the path."""
    node = config
    for part in path.split("."):
        if part not in node:
            raise ValueError(f"config.{path} is missing (no field {part!r})")
        node = node[part]
    return node


def _check_choice(config, path: str, allowed) -> None:
    value = get_field(config, path)
    if value not in list(allowed):
        raise ValueError(f"config.{path} must be one of {sorted(allowed)}, got {value!r}")


def _check_int(config, path: str, minimum: int) -> None:
    value = get_field(config, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"config.{path} must be an integer >= {minimum}, got {value!r}")


def _check_float(config, path: str, low: float, high: float = math.inf, *, open_low: bool = False,
                 open_high: bool = False) -> None:
    value = get_field(config, path)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high or high == math.inf else ']'}"
        raise ValueError(f"config.{path} must be a number in {interval}, got {value!r}")


def _choices() -> dict:
    return {"device": DEVICES, "data.dataset": dataset_names(), "training.sde": SDES.names(),
            "training.loss": LOSSES.names(), "model.name": sorted(NETWORKS),
            "model.parameterization": ("auto",) + tuple(PARAMETERIZATIONS), "optim.optimizer": OPTIMIZERS,
            "sampling.method": SAMPLING_METHODS, "sampling.predictor": samplers.PREDICTORS.names(),
            "sampling.corrector": samplers.CORRECTORS.names(), "eval.trace": TRACES}


_INTS = (("seed", 0), ("data.num_train", 0), ("training.batch_size", 1), ("training.n_iters", 0),
         ("training.log_freq", 1), ("training.eval_freq", 1), ("training.checkpoint_freq", 1),
         ("training.snapshot_freq", 1), ("training.keep_last", 1), ("training.snapshot_num_samples", 0),
         ("model.num_scales", 1), ("optim.warmup", 0), ("sampling.n_steps", 0), ("sampling.steps", 1),
         ("sampling.order", 1), ("sampling.num_samples", 1), ("sampling.batch_size", 1),
         ("eval.batch_size", 1), ("eval.num_samples", 1), ("eval.true_nll_samples", 2))
_OPEN = dict(open_low=True)
_FLOATS = (("training.eps", 0.0, 1.0, dict(open_low=True, open_high=True)), ("model.ema_rate", 0.0, 1.0, {}),
           ("optim.lr", 0.0, math.inf, _OPEN), ("optim.beta1", 0.0, 1.0, dict(open_high=True)),
           ("optim.eps", 0.0, math.inf, _OPEN), ("optim.weight_decay", 0.0, math.inf, {}),
           ("optim.grad_clip", 0.0, math.inf, {}), ("sampling.snr", 0.0, math.inf, _OPEN),
           ("sampling.eps", 0.0, 1.0, dict(open_low=True, open_high=True)),
           ("sampling.rtol", 0.0, math.inf, _OPEN), ("sampling.atol", 0.0, math.inf, _OPEN),
           ("eval.rtol", 0.0, math.inf, _OPEN), ("eval.atol", 0.0, math.inf, _OPEN),
           ("eval.likelihood_eps", 0.0, 1.0, dict(open_low=True, open_high=True)))


def _check_training_options(config) -> None:
    """The loss switches must fit together (continuous DSM vs the discrete DDPM / SMLD losses)."""
    t = config.training
    if t.continuous != (t.loss == "dsm"):
        raise ValueError(f"config.training.continuous must be {t.loss == 'dsm'} for training.loss={t.loss!r} "
                         f"(dsm is continuous-time, ddpm and smld are discrete), got {t.continuous!r}")
    if t.loss != "dsm" and (t.likelihood_weighting or t.importance_sampling):
        raise ValueError(f"config.training.likelihood_weighting / importance_sampling apply to "
                         f"training.loss='dsm' only, got loss={t.loss!r}")
    if t.importance_sampling and not t.likelihood_weighting:
        raise ValueError("config.training.importance_sampling=True requires training.likelihood_weighting=True")


def _check_times(config, sde: SDE) -> None:
    for path in ("training.eps", "sampling.eps", "eval.likelihood_eps"):
        if not get_field(config, path) < sde.T:
            raise ValueError(f"config.{path} must lie in (0, T) = (0, {sde.T}) for training.sde="
                             f"{config.training.sde!r}, got {get_field(config, path)!r}")


def _check_network(config, sde: SDE) -> None:
    """A Fourier embedding (of ``log label``) must only see positive noise labels."""
    if config.model.get("embedding_type") != "fourier":
        return
    t_min = 0.0 if not config.training.continuous else min(
        config.training.eps, config.sampling.eps, config.eval.likelihood_eps)
    labels = sde.noise_label(torch.tensor([t_min, sde.T], dtype=torch.float64), config.training.continuous)
    if not bool((labels > 0).all()):
        raise ValueError(f"config.model.embedding_type='fourier' embeds log(noise label), but "
                         f"training.sde={config.training.sde!r} (continuous={config.training.continuous}) gives "
                         f"label {labels.min().item():g} at t={t_min:g}; use 'positional'")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first bad field, its value and what is allowed."""
    for path, allowed in _choices().items():
        _check_choice(config, path, allowed)
    for path, minimum in _INTS:
        _check_int(config, path, minimum)
    for path, low, high, kwargs in _FLOATS:
        _check_float(config, path, low, high, **kwargs)
    _check_training_options(config)
    sde = build_sde(config)
    _check_times(config, sde)
    _check_network(config, sde)


# ---------------------------------------------------------------------------------------- builders
def build_sde(config: ml_collections.ConfigDict) -> SDE:
    """``sde_lib.get_sde(training.sde, ...)`` with the config.model fields its constructor takes."""
    params = inspect.signature(SDES.get(config.training.sde)).parameters
    kwargs = {arg: config.model[field] for arg, field in SDE_FIELDS.items() if arg in params}
    try:
        return get_sde(config.training.sde, **kwargs)
    except ValueError as err:
        raise ValueError(f"config.model ({config.training.sde}): {err}") from err


def _data_kwargs(name: str, spec: NetworkSpec, shape: tuple) -> dict:
    if len(shape) != spec.data_rank:
        kind = "vector data (D,)" if spec.data_rank == 1 else "images (C, H, W)"
        raise ValueError(f"config.model.name={name!r} takes {kind}, but the data items have shape {shape}")
    if spec.data_rank == 1:
        return {"dim": shape[0]}
    if shape[1] != shape[2]:
        raise ValueError(f"config.model.name={name!r} needs square images, got {shape}")
    return {"in_channels": shape[0], "image_size": shape[1]}


def network_kwargs(config: ml_collections.ConfigDict, data_shape: tuple) -> dict:
    """Plain constructor arguments of ``model.name``: its fields from config.model plus the data shape."""
    spec = NETWORKS[config.model.name]
    kwargs = {f: config.model[f] for f in spec.fields if f in config.model}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return {**kwargs, **_data_kwargs(config.model.name, spec, tuple(data_shape))}


def build_model(config: ml_collections.ConfigDict, data_shape: tuple) -> nn.Module:
    try:
        return get_model(config.model.name, **network_kwargs(config, data_shape))
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.model ({config.model.name}): {err}") from err


def score_kwargs(config: ml_collections.ConfigDict) -> dict:
    """Arguments of ``models.get_score_fn`` besides the SDE and the network."""
    parameterization = config.model.parameterization
    return {"continuous": config.training.continuous,
            "parameterization": None if parameterization == "auto" else parameterization,
            "scale_by_sigma": config.model.scale_by_sigma}


def _loss_candidates(config: ml_collections.ConfigDict) -> dict:
    t = config.training
    return {"reduce": "mean" if t.reduce_mean else "sum", "likelihood_weighting": t.likelihood_weighting,
            "importance_sampling": t.importance_sampling, "eps": t.eps}


def _accepted(fn: Callable, candidates: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in candidates.items() if k in params}


def loss_setup(config: ml_collections.ConfigDict) -> tuple[Callable, dict]:
    """The loss function of ``training.loss`` and the keyword arguments it takes from the config."""
    loss_fn = get_loss_fn(config.training.loss)
    return loss_fn, _accepted(loss_fn, _loss_candidates(config))


def noise_setup(config: ml_collections.ConfigDict) -> tuple[Callable, dict]:
    """The noise drawer of ``training.loss`` (``losses.get_noise_fn``) and the config arguments it takes."""
    noise_fn = get_noise_fn(config.training.loss)
    return noise_fn, _accepted(noise_fn, _loss_candidates(config))


def data_from_config(config: ml_collections.ConfigDict, with_train: bool = True) -> DataSpec:
    d = config.data
    spec = build_data(d.dataset, root=d.root or None, num_train=d.num_train, num_test=config.eval.num_samples,
                      seed=config.seed, with_train=with_train, centered=d.centered,
                      uniform_dequantization=d.uniform_dequantization, random_flip=d.random_flip)
    if with_train and config.training.batch_size > len(spec.train):
        raise ValueError(f"config.training.batch_size={config.training.batch_size} is larger than the "
                         f"training set ({len(spec.train)} items of {d.dataset!r})")
    return spec


def sampler_kwargs(sampling: ml_collections.ConfigDict) -> dict:
    """Keyword arguments of the chosen sampler (``pc_sample`` / ``ode_sample`` / ``fast_sample``)."""
    common = {"eps": sampling.eps, "denoise": sampling.denoise}
    per_method = {
        "pc": {"predictor": sampling.predictor, "corrector": sampling.corrector, "snr": sampling.snr,
               "n_steps": sampling.n_steps, "probability_flow": sampling.probability_flow},
        "ode": {"method": sampling.ode_method, "rtol": sampling.rtol, "atol": sampling.atol},
        "fast": {"steps": sampling.steps, "order": sampling.order},
    }
    return {**common, **per_method[sampling.method]}
