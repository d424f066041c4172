"""Bring your own model: a diffusers ``UNet2DModel`` and its scheduler as the toolkit's process and score,
and a toolkit VP schedule as a diffusers scheduler config.

    sde, score_fn = models.from_diffusers(unet, scheduler)     # any sampler, log_likelihood, guidance
    sde, score_fn, unet, scheduler = models.load_diffusers_dir("path/to/save_pretrained_dir")
    config = models.to_diffusers_scheduler_config(sde)         # DDPMScheduler.from_config(config)

The process is ``sde_lib.TabulatedVPSDE`` with the scheduler's own ``betas`` (bit for bit), so DDPM
timestep ``i`` is the time ``t_i = i T / (N - 1)`` and ``models.diffusers_times`` turns a scheduler's
``timesteps`` into the toolkit's times. ``diffusers`` is imported only when one of these functions runs
(the ``diffusers`` extra: ``pip install -e ".[diffusers]"``).
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Callable, Mapping, NamedTuple, Tuple

import torch
from torch import nn

from scoresde.models.utils import get_score_fn, get_variance_fn, trained_marginal
from scoresde.sde_lib import SDE, TabulatedVPSDE, VPSDE, subVPSDE
from scoresde.sde_lib.predictions import score_from_x0, x0_from_score
from scoresde.utils import check_choice

# diffusers' prediction_type -> the toolkit's parameterization (models.get_score_fn)
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
# Schedulers of DDPM's discrete VP chain (betas, alphas_cumprod): the model they drive is a VP model.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "DEISMultistepScheduler", "UniPCMultistepScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")
# Scheduler settings that change the model's process or its outputs, and which the adapter cannot carry
# (the other fields only choose a sampling grid or a step rule, which the toolkit's samplers replace).
_UNSUPPORTED_TRUE = {
    "thresholding": "dynamic thresholding (use the samplers' thresholding= argument instead)",
    "rescale_betas_zero_snr": "zero-terminal-SNR betas (alpha_bar = 0 at the last level: no Gaussian prior)",
    "use_flow_sigmas": "flow-matching sigmas (not a VP process)",
}
_UNSUPPORTED_VARIANCES = ("learned",)
# Nichol & Dhariwal's learned variance: the UNet's second half of channels interpolates log beta_tilde, log beta
LEARNED_RANGE = "learned_range"


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError('this needs the diffusers extra: pip install -e ".[diffusers]"') from err
    return diffusers


class SchedulerSpec(NamedTuple):
    """What the toolkit takes from a diffusers scheduler: the betas, the parameterization and the clip range."""
    betas: torch.Tensor              # float32, as the scheduler's ``betas``
    parameterization: str            # "eps" | "x0" | "v"
    clip_range: float | None         # clamp the data prediction to [-r, r] (diffusers' clip_sample), or None
    learned_variance: bool = False   # variance_type "learned_range": 2 C output channels (eps, v)


def scheduler_spec(scheduler, clip_sample: bool | None = None) -> SchedulerSpec:
    """Read a diffusers scheduler (or its config dict); ``ValueError`` naming what the adapter cannot carry.

    ``clip_sample=None`` requires the config not to clip (DDPM/DDIM schedulers default to
    ``clip_sample=True``); ``False`` adapts the unclipped model, ``True`` clamps the data prediction to
    ``[-clip_sample_range, clip_sample_range]`` inside the score (as ``DDPMScheduler.step`` does; the
    toolkit's DDIM then matches ``DDIMScheduler.step(use_clipped_model_output=True)``, diffusers' default
    keeping the unclipped noise prediction in its direction term). Clipping is a sampling heuristic: leave
    it off for likelihoods.
    """
    name, config = _scheduler_config(scheduler)
    if name is not None and name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} is not a discrete VP (DDPM-family) scheduler; supported: {list(SCHEDULERS)}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction!r} is not supported; supported: {list(PREDICTION_TYPES)}")
    for key, what in _UNSUPPORTED_TRUE.items():
        if config.get(key):
            raise ValueError(f"scheduler {key}=True is not supported: {what}")
    if config.get("variance_type") in _UNSUPPORTED_VARIANCES:
        raise ValueError(f"variance_type {config['variance_type']!r} is not supported; supported: fixed_small "
                         f"(ancestral 'posterior'), fixed_large ('forward') and {LEARNED_RANGE!r} (a learned "
                         f"variance, Nichol & Dhariwal 2021)")
    betas = getattr(scheduler, "betas", None)
    betas = betas.detach().to("cpu", torch.float32) if torch.is_tensor(betas) else _betas_from_config(config)
    return SchedulerSpec(betas, PREDICTION_TYPES[prediction], _clip_range(config, clip_sample),
                         config.get("variance_type") == LEARNED_RANGE)


def _scheduler_config(scheduler) -> Tuple[str | None, dict]:
    if hasattr(scheduler, "config") and isinstance(scheduler.config, Mapping):
        return type(scheduler).__name__, dict(scheduler.config)
    if isinstance(scheduler, Mapping):
        return scheduler.get("_class_name"), dict(scheduler)
    raise ValueError(f"scheduler must be a diffusers scheduler or its config dict, got {type(scheduler).__name__}")


def _betas_from_config(config: dict) -> torch.Tensor:
    """diffusers' own betas for a config (``DDPMScheduler.__init__``: float32 tables)."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return torch.tensor(config["trained_betas"], dtype=torch.float32)
    schedule = config.get("beta_schedule", "linear")
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    if schedule == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar
        return betas_for_alpha_bar(n)
    raise ValueError(f"beta_schedule {schedule!r} is not supported; supported: {list(BETA_SCHEDULES)} or trained_betas")


def _clip_range(config: dict, clip_sample: bool | None) -> float | None:
    if clip_sample is None and config.get("clip_sample", False):
        raise ValueError("the scheduler has clip_sample=True (it clamps x0 at every step): pass clip_sample=False "
                         "for the unclipped model or clip_sample=True to clamp the score's x0 likewise")
    return float(config.get("clip_sample_range", 1.0)) if clip_sample else None


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as a toolkit network, ``forward(x, noise_label, cond=None)``: the label is
    its (possibly fractional) DDPM timestep and ``cond`` its ``class_labels``."""

    def __init__(self, unet: nn.Module, learn_variance: bool = False):
        super().__init__()
        self.unet = unet
        self.learn_variance = bool(learn_variance)   # outputs (eps, v): models.get_score_fn splits them
        self.conditional = getattr(unet, "class_embedding", None) is not None

    def forward(self, x: torch.Tensor, noise_label: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditional and cond is None:
            raise ValueError("this UNet is class-conditional: pass cond (its class_labels) to score_fn")
        if cond is not None and not self.conditional:
            raise ValueError("cond was given but this UNet has no class embedding (num_class_embeds is None)")
        return self.unet(x, noise_label, class_labels=cond).sample


def from_diffusers(unet: nn.Module, scheduler, clip_sample: bool | None = None,
                   continuous: bool = False) -> Tuple[TabulatedVPSDE, Callable]:
    """``(sde, score_fn)`` for a diffusers ``UNet2DModel`` and its scheduler (object or config dict).

    ``sde`` is ``sde_lib.TabulatedVPSDE`` with the scheduler's ``betas``; ``score_fn(x, t, cond=None)`` is
    the model's score, ``cond`` its class labels. As for the toolkit's discrete models
    (``get_score_fn(continuous=False)``) the UNet sees the DDPM timestep ``sde.timestep_index(t)`` and the
    ``epsilon`` / ``sample`` / ``v_prediction`` output becomes a score with that level's ``alpha_bar``;
    ``continuous=True`` passes the fractional timestep ``t (N - 1) / T`` and the interpolated ``alpha_t``
    instead (smooth in ``t``; the same on the levels' times). ``clip_sample`` as in ``scheduler_spec``.
    ``variance_type="learned_range"`` (a UNet of ``2 C`` output channels, Nichol & Dhariwal 2021): the score
    uses the first ``C``, and ``score_fn.variance_fn(x, t, chain=None, cond=None)`` gives the learned
    ``Sigma_theta = exp(v log beta + (1 - v) log beta_tilde)`` with ``v = (out + 1) / 2`` of the others, which
    ``ddpm_sample`` and the chain's bounds use (diffusers' ``_get_variance``, except at level 0, where
    ``beta_tilde_0 = 0`` is replaced by ``beta_tilde_1`` as Nichol & Dhariwal do, not by 1e-20).
    Unsupported schedules, prediction types, thresholding, ``variance_type="learned"``: ``ValueError``.
    """
    unet_cls = _diffusers().UNet2DModel
    if not isinstance(unet, unet_cls):
        raise ValueError(f"unet must be a diffusers UNet2DModel, got {type(unet).__name__}")
    spec = scheduler_spec(scheduler, clip_sample)
    channels_in, channels_out = unet.config.in_channels, unet.config.out_channels
    if channels_out != channels_in * (2 if spec.learned_variance else 1):
        raise ValueError(f"the UNet predicts {channels_out} channels for {channels_in} input channels; "
                         f"from_diffusers needs out_channels == in_channels, or 2 x in_channels with the "
                         f"scheduler's variance_type={LEARNED_RANGE!r} (got {spec.learned_variance and LEARNED_RANGE or 'fixed'})")
    sde = TabulatedVPSDE(spec.betas)
    net = DiffusersUNet(unet, learn_variance=spec.learned_variance)
    continuous = bool(continuous)

    def score_fn(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        score = get_score_fn(sde, net, continuous=continuous, parameterization=spec.parameterization,
                             cond=cond)(x, t)
        if spec.clip_range is None:
            return score
        # diffusers' clip_sample: the data prediction clamped, with the coefficients the score used
        coeffs = trained_marginal(sde, t, continuous, x)
        x0 = x0_from_score(x, score, coeffs).clamp(-spec.clip_range, spec.clip_range)
        return score_from_x0(x, x0, coeffs)

    if spec.learned_variance:
        def variance_fn(x: torch.Tensor, t: torch.Tensor, chain: SDE | None = None,
                        cond: torch.Tensor | None = None) -> torch.Tensor:
            return get_variance_fn(sde, net, continuous=continuous, cond=cond)(x, t, chain)

        score_fn.variance_fn = variance_fn
    return sde, score_fn


def diffusers_times(timesteps, sde: SDE) -> torch.Tensor:
    """The toolkit's times ``t_i = i T / (N - 1)`` (float64) of DDPM timesteps ``i`` (a scheduler's
    ``timesteps``): ``fast_sample(..., times=diffusers_times(scheduler.timesteps, sde))``."""
    return torch.as_tensor(timesteps).detach().to("cpu", torch.float64) * (sde.T / (sde.N - 1))


# ----- a toolkit schedule as a diffusers scheduler ------------------------------------------------------
_TO_PREDICTION_TYPE = {v: k for k, v in PREDICTION_TYPES.items()}


def to_diffusers_scheduler_config(sde: SDE, parameterization: str = "eps",
                                  save_dir: str | os.PathLike | None = None) -> dict:
    """A diffusers scheduler config (dict) whose betas are ``sde.discrete_betas`` bit for bit, so that
    ``DDPMScheduler.from_config(config)`` (or ``DDIMScheduler`` ...) runs a toolkit-trained discrete VP model.

    ``VPSDE``'s linear schedule is written as ``beta_schedule="linear"`` with ``beta_start = beta_min / N``,
    ``beta_end = beta_max / N``; other VP tables (cosine, tabulated) as ``trained_betas``. ``clip_sample``
    is off (the toolkit never clips). ``parameterization`` is what the network predicts (``"eps"``, ``"x0"``
    or ``"v"``). With ``save_dir`` the config is also written there as ``scheduler_config.json``
    (``DDPMScheduler.save_pretrained``). Exact for models trained on the discrete chain
    (``continuous=False``); a continuous-time model is then evaluated at the DDPM levels' times only.
    """
    check_choice("parameterization", parameterization, list(_TO_PREDICTION_TYPE))
    if not isinstance(sde, VPSDE) or isinstance(sde, subVPSDE):
        raise ValueError(f"only VP processes (VPSDE, CosineVPSDE, TabulatedVPSDE) have a diffusers scheduler, "
                         f"got {type(sde).__name__}")
    config = {"_class_name": "DDPMScheduler", "num_train_timesteps": sde.N,
              "prediction_type": _TO_PREDICTION_TYPE[parameterization], "clip_sample": False}
    if type(sde) is VPSDE:
        config.update(beta_schedule="linear", beta_start=sde.beta_0 / sde.N, beta_end=sde.beta_1 / sde.N,
                      trained_betas=None)
    else:
        config.update(trained_betas=sde.discrete_betas.tolist())
    if save_dir is not None:
        scheduler = _diffusers().DDPMScheduler.from_config(config)
        scheduler.save_pretrained(os.fspath(save_dir))
    return config


# ----- loading a save_pretrained directory --------------------------------------------------------------
def load_diffusers_dir(path: str | os.PathLike, device=None, scheduler_path: str | os.PathLike | None = None,
                       clip_sample: bool | None = None, continuous: bool = False):
    """``(sde, score_fn, unet, scheduler)`` from a local ``save_pretrained`` directory, nothing downloaded.

    ``path`` is a pipeline directory (``unet/`` and ``scheduler/`` inside) or a bare UNet directory
    (``config.json`` and the weights), whose scheduler is then ``scheduler_path`` or ``path`` itself
    (``scheduler_config.json``). The UNet goes to ``device`` in eval mode. ``clip_sample`` and
    ``continuous`` as in ``from_diffusers``. A missing directory or file is a ``ValueError``.
    """
    diffusers = _diffusers()
    root = _existing_dir(path, "path")
    unet_dir = os.path.join(root, "unet") if os.path.isdir(os.path.join(root, "unet")) else root
    if scheduler_path is not None:
        scheduler_dir = _existing_dir(scheduler_path, "scheduler_path")
    else:
        scheduler_dir = os.path.join(root, "scheduler") if os.path.isdir(os.path.join(root, "scheduler")) else root
    scheduler_cls = getattr(diffusers, _scheduler_class_name(scheduler_dir))
    # without accelerate, diffusers falls back to low_cpu_mem_usage=False itself, after a long notice
    quiet = {} if importlib.util.find_spec("accelerate") else {"low_cpu_mem_usage": False}
    unet = _load(diffusers.UNet2DModel, unet_dir, "config.json", "UNet", **quiet)
    scheduler = _load(scheduler_cls, scheduler_dir, "scheduler_config.json", "scheduler")
    unet = unet.to(device).eval() if device is not None else unet.eval()
    sde, score_fn = from_diffusers(unet, scheduler, clip_sample=clip_sample, continuous=continuous)
    return sde, score_fn, unet, scheduler


def _existing_dir(path, name: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{name}: no such directory: {path}")
    return path


def _scheduler_class_name(scheduler_dir: str) -> str:
    config_file = os.path.join(scheduler_dir, "scheduler_config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"no scheduler_config.json in {scheduler_dir} (a pipeline directory has scheduler/)")
    with open(config_file) as f:
        name = json.load(f).get("_class_name")
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler {name!r} in {config_file} is not a discrete VP (DDPM-family) scheduler; "
                         f"supported: {list(SCHEDULERS)}")
    return name


def _load(cls, directory: str, config_name: str, what: str, **kwargs):
    if not os.path.isfile(os.path.join(directory, config_name)):
        raise ValueError(f"no {config_name} in {directory}: not a saved diffusers {what} directory")
    try:
        return cls.from_pretrained(directory, local_files_only=True, **kwargs)
    except (OSError, EnvironmentError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot load the {what} from {directory}: {first}") from err
