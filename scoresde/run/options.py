"""Plain, frozen options: one object per concern (data, process, network, loss, optimiser, sampler,
evaluation, training loop), built once from the config by ``scoresde/cli/factory.py``. The drivers
(``train``, ``evaluate``, ``sample``) take a ``RunOptions`` and never see the ``ConfigDict``.

Each object builds what it describes (``SDEOptions.build()``, ``NetworkOptions.build(shape)``, ...), so
the mapping from a name to a constructor and its arguments lives next to the values it uses.

``RunOptions.to_json()`` / ``RunOptions.from_json(text)`` write and read them as plain JSON (what a
checkpoint stores), exactly: tuples come back as tuples and keyword mappings as read-only mappings.
"""
from __future__ import annotations

import json
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from torch import nn

from scoresde import samplers
from scoresde.distill import consistency_sample
from scoresde.models import KLAutoencoder, get_model
from scoresde.sde_lib import SDE, get_sde
from scoresde.utils import Registry
from scoresde.train.losses import get_loss_fn, get_noise_fn
from scoresde.train.optim import build_optimizer


def frozen_mapping(values: Mapping) -> Mapping:
    """A read-only dict, so that options holding keyword arguments stay immutable."""
    return MappingProxyType(dict(values))


# ---------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class DataOptions:
    dataset: str                   # gmm | checkerboard | digits | cifar10 | mnist | folder
    root: str | None               # image files; None means ./data/<dataset>
    num_train: int                 # toy: points drawn; images: first N (0 = all)
    num_test: int                  # held-out items for the loss and the likelihood
    centered: bool                 # model space [-1, 1] instead of [0, 1]
    uniform_dequantization: bool   # (v + u) / K in training instead of the cell centre
    random_flip: bool              # horizontal flips in training
    image_size: int = 32           # folder: items are image_size x image_size
    channels: int = 3              # folder: 1 (grey) | 3 (RGB)
    resize: str = "center_crop"    # folder: center_crop (largest centred square, LANCZOS) | resize (squash)
    labels_from_folders: bool = False  # folder: sub-folders are the classes (sorted names)
    heldout_fraction: float = 0.05  # folder: fraction of the files held out (a fixed permutation)
    first_stage: str = ""          # latent diffusion: an autoencoder file or folder ("" = pixel space)
    resolution: int = 0            # images average-pooled to resolution x resolution in model space (0 = native)
    low_res: int = 0               # super-resolution: the condition is the item average-pooled to low_res x low_res

    @property
    def loader_kwargs(self) -> dict:
        """The image loader's settings beyond root and split (only an image folder has any)."""
        if self.dataset != "folder":
            return {}
        return {"image_size": self.image_size, "channels": self.channels, "resize": self.resize,
                "labels_from_folders": self.labels_from_folders, "heldout_fraction": self.heldout_fraction}


# ---------------------------------------------------------------------------------------- process
@dataclass(frozen=True)
class SDEOptions:
    name: str                      # a name in sde_lib.SDES
    kwargs: Mapping                # its constructor's arguments (beta_min, ..., N)

    def build(self) -> SDE:
        return get_sde(self.name, **self.kwargs)


# ---------------------------------------------------------------------------------------- network
@dataclass(frozen=True)
class NetworkOptions:
    name: str                      # a name in models.MODELS
    kwargs: Mapping                # its constructor's arguments, data shape excluded
    continuous: bool               # continuous-time noise labels (else the discrete chain's)
    parameterization: str | None   # eps | x0 | score; None: the SDE's default
    scale_by_sigma: bool           # divide a "score" output by sigma(t)
    sigma_data: float = 0.5        # the edm parameterisation's data standard deviation
    pretrained: str | None = None  # a diffusers directory or score_sde checkpoint used instead of the workdir's
    pretrained_config: str | None = None  # the score_sde checkpoint's config file

    def build(self, data_shape: tuple) -> nn.Module:
        """The network for data items of ``data_shape`` ((D,) vectors or (C, H, W) images)."""
        return get_model(self.name, **self.kwargs, **shape_kwargs(data_shape))

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional network or classifier (0: unconditional)."""
        return int(self.kwargs.get("num_classes", 0))

    @property
    def cond_channels(self) -> int:
        """Channels of the low-resolution image an image-conditioned network takes (0: none)."""
        return int(self.kwargs.get("cond_channels", 0))

    @property
    def score_kwargs(self) -> dict:
        """Arguments of ``models.get_score_fn`` besides the SDE and the network."""
        return {"continuous": self.continuous, "parameterization": self.parameterization,
                "scale_by_sigma": self.scale_by_sigma, "sigma_data": self.sigma_data}


def shape_kwargs(data_shape: tuple) -> dict:
    """The data shape as a network's constructor takes it."""
    if len(data_shape) == 1:
        return {"dim": data_shape[0]}
    return {"in_channels": data_shape[0], "image_size": data_shape[1]}


# ---------------------------------------------------------------------------------------- loss
@dataclass(frozen=True)
class LossOptions:
    name: str                      # a name in train.losses.LOSSES: dsm | ddpm | smld | v | flow | edm | classifier | hybrid | vlb
    kwargs: Mapping                # the loss function's arguments (reduce, weighting, eps)
    noise_kwargs: Mapping          # the matching noise drawer's arguments
    level_sampling: bool = False   # vlb: levels importance-sampled from their terms' history (train.level_sampler)

    @property
    def fn(self) -> Callable[..., torch.Tensor]:
        return get_loss_fn(self.name)

    @property
    def is_classifier(self) -> bool:
        """Whether the run trains a noise-conditional classifier (``logits_fn`` and labels) instead of a score."""
        return self.name == "classifier"

    @property
    def describe(self) -> str:
        """What the number called "loss" is, in one line."""
        reduce = "mean over dimensions" if self.kwargs.get("reduce") == "mean" else "half sum over dimensions"
        if self.name == "classifier":
            return ("cross-entropy -log p_phi(y | x_t, t) of the noise-conditional classifier (nats per item; "
                    "Song et al. 2021, App. I.1); lower is better")
        if self.name in ("hybrid", "vlb"):
            what = {"hybrid": f"the hybrid loss L_simple + {self.kwargs.get('vlb_weight')} L_vlb (Nichol & Dhariwal "
                              f"2021, Sec. 3.1; L_vlb in bits/dim with reduce_mean)",
                    "vlb": "one level's term of the variational bound L_vlb (Nichol & Dhariwal 2021), weighted "
                           "1 / (N p_t) when levels are importance-sampled"}[self.name]
        elif self.name in ("flow", "edm", "v"):
            what = {"flow": "conditional flow matching ||v_theta - (alpha' x_0 + sigma' z)||^2 (Lipman et al. 2023)",
                    "edm": "EDM's weighted denoising loss (Karras et al. 2022, eq. 8)",
                    "v": "DDPM's loss on the v target ||v - v_theta||^2 (Salimans & Ho 2022)"}[self.name]
        elif self.name == "dsm" and self.kwargs.get("likelihood_weighting"):
            what = ("likelihood-weighted denoising score matching (Song, Durkan et al. 2021): up to a constant, "
                    "an upper bound on the NLL")
        else:
            what = {"dsm": "denoising score matching ||sigma_t s(x_t, t) + z||^2 (Song et al. 2021, eq. 7)",
                    "ddpm": "DDPM's L_simple ||eps - eps_theta||^2 (Ho et al. 2020, eq. 14)",
                    "smld": "SMLD's sigma^2-weighted denoising score matching (Song & Ermon 2019)"}.get(
                        self.name, f"the {self.name!r} loss")
        return f"{what}; per sample, {reduce}; lower is better"

    @property
    def noise_fn(self) -> Callable[..., dict]:
        return get_noise_fn(self.name)


# ---------------------------------------------------------------------------------------- optimiser
@dataclass(frozen=True)
class OptimOptions:
    optimizer: str                 # adam
    lr: float                      # peak learning rate
    beta1: float
    eps: float
    weight_decay: float
    warmup: int                    # linear warm-up updates
    grad_clip: float               # max global gradient norm; 0 disables clipping

    def build(self, params) -> torch.optim.Optimizer:
        return build_optimizer(params, self.optimizer, lr=self.lr, beta1=self.beta1, eps=self.eps,
                               weight_decay=self.weight_decay)


# ---------------------------------------------------------------------------------------- sampler
@dataclass(frozen=True)
class SamplingMethod:
    """A sampler of ``samplers`` and the builder of its keyword arguments from ``SamplerOptions``."""

    sample: Callable               # samplers.pc_sample, ...: (sde, score_fn, shape, **kwargs) -> (x, nfe)
    arguments: Callable[["SamplerOptions"], dict]


SAMPLING_METHODS: Registry = Registry("sampling method")
SAMPLING_METHODS.register("pc", SamplingMethod(samplers.pc_sample, lambda s: {
    "predictor": s.predictor, "corrector": s.corrector, "snr": s.snr, "n_steps": s.n_steps,
    "probability_flow": s.probability_flow, "denoise": s.denoise, "eps": s.eps}))
SAMPLING_METHODS.register("ode", SamplingMethod(samplers.ode_sample, lambda s: {
    "method": s.ode_method, "rtol": s.rtol, "atol": s.atol, "denoise": s.denoise, "eps": s.eps,
    "steps": s.steps if s.ode_method in samplers.ode.FIXED_METHODS else None}))
SAMPLING_METHODS.register("fast", SamplingMethod(samplers.fast_sample, lambda s: {
    "steps": s.steps, "order": s.order, "solver": s.solver, "denoise": s.denoise, "eps": s.eps,
    "thresholding": s.threshold}))
SAMPLING_METHODS.register("ddim", SamplingMethod(samplers.ddim_sample, lambda s: {
    "steps": s.steps, "eta": s.eta, "denoise": s.denoise, "eps": s.eps, "thresholding": s.threshold}))
SAMPLING_METHODS.register("edm", SamplingMethod(samplers.edm_sample, lambda s: {
    "steps": s.steps, "churn": s.churn, "s_noise": s.s_noise, "eps": s.eps}))
SAMPLING_METHODS.register("ddpm", SamplingMethod(samplers.ddpm_sample, lambda s: {
    "steps": s.steps, "variance": s.ddpm_variance}))


def draw_consistency(sde: SDE, f, shape: tuple, steps: int, progress: bool = False, **kwargs):
    """``distill.consistency_sample`` with the sampler call's signature (``f`` is the student's
    ``ConsistencyFunction``; ``steps`` evaluations, no progress bar of its own)."""
    return consistency_sample(sde, f, shape, steps=steps, **kwargs)


SAMPLING_METHODS.register("consistency", SamplingMethod(draw_consistency, lambda s: {"steps": s.steps}))


@dataclass(frozen=True)
class SamplerOptions:
    method: str                    # a name in SAMPLING_METHODS
    predictor: str
    corrector: str
    snr: float
    n_steps: int
    probability_flow: bool
    denoise: bool
    eps: float
    steps: int
    order: int
    solver: str
    eta: float
    churn: float
    s_noise: float
    ode_method: str
    rtol: float
    atol: float
    num_samples: int
    batch_size: int
    label: int | str | None = None         # a class, "all" (one row per class) or None (unconditional)
    guidance: str = "none"                 # none | cfg | classifier
    guidance_scale: float = 1.0            # w of samplers.classifier_free_guidance / classifier_guidance
    classifier_workdir: str | None = None  # the classifier of guidance = classifier
    threshold: float | None = None         # fast / ddim: dynamic thresholding quantile
    mask: str = "lower_half"               # inpaint: which coordinates are known
    inpaint_method: str = "replacement"    # replacement | repaint
    resample: int = 1                      # repaint's U
    inpaint_data: str | None = None        # a .npz of items to inpaint / colorize; None = held-out data
    ddpm_variance: str = "posterior"       # ddpm: posterior | forward when the model learns no variance
    cond_noise: float = 0.0                # image-conditioned: the condition's augmentation level s
    cascade: tuple | None = None           # (base workdir, super-resolution workdir) of a cascade
    low_res_from: str | None = None        # image-conditioned: "heldout" (the held-out items' low-res views)

    @property
    def imputation_kwargs(self) -> dict:
        """Keyword arguments of ``samplers.inpaint`` / ``colorize``: the method and the PC settings."""
        return {"method": self.inpaint_method, "resample": self.resample, "predictor": self.predictor,
                "corrector": self.corrector, "snr": self.snr, "n_steps": self.n_steps,
                "probability_flow": self.probability_flow, "denoise": self.denoise, "eps": self.eps}

    @property
    def kwargs(self) -> dict:
        """Keyword arguments of the chosen sampler."""
        return SAMPLING_METHODS.get(self.method).arguments(self)

    def draw(self, sde: SDE, score_fn, shape: tuple, **kwargs):
        """``(x, nfe)`` from the chosen sampler; ``kwargs`` add ``device``, ``generator``, ..."""
        return SAMPLING_METHODS.get(self.method).sample(sde, score_fn, shape, **self.kwargs, **kwargs)


# ---------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class BoundOptions:
    """The likelihood bounds ``--mode eval`` reports (``scoresde/likelihood/elbo.py`` and ``chain.py``)
    and their Monte-Carlo sizes."""

    names: tuple                   # which of "elbo", "vlb", "iw", in that order; () = none
    items: int = 100               # held-out items (the first n; 0 = all)
    rows: int = 2048               # most rows per score call
    elbo_samples: int = 64         # elbo: draws of (t, +-z) per item
    vlb_levels: int = 0            # vlb: levels drawn per item; 0 = the exact sum over all N levels
    iw_k: tuple = (1, 10, 100)     # iw: the K of each IW_K
    iw_repeats: int = 1            # iw: IW_K estimates per item at the largest K
    variance: str = "forward"      # vlb / iw: forward | posterior
    decoder: str = "density"       # vlb / iw: density | discretized
    score_times: str = "log_snr"   # vlb / iw: grid (discrete-time models) | log_snr (continuous-time models)
    chain_steps: int = 0           # vlb / iw: the chain respaced to this many levels; 0 = all N
    eps: float = 1e-5              # elbo: the bound is on log p_eps


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int
    num_samples: int               # held-out items
    likelihood: bool               # compute bits/dim or nll
    trace: str                     # exact | gaussian | rademacher
    method: str                    # ODE solver
    rtol: float
    atol: float
    eps: float                     # likelihood of p_eps
    true_nll_samples: int          # Monte Carlo size of the toy data's entropy
    bounds: BoundOptions = field(default_factory=lambda: BoundOptions(names=()))
    sample_quality: bool = False   # FD / KID / precision / recall of fresh samples against the held-out items
    quality_samples: int = 300
    inception_weights: str | None = None   # the Inception weights file for non-digit images
    fid_samples: int = 50_000      # --mode fid: samples per seed
    fid_seeds: int = 1             # --mode fid: sample sets, seeds seed .. seed + fid_seeds - 1
    fid_reference: str | None = None   # --mode fid: the reference statistics .npz (None: cached in the work directory)
    fid_reference_items: int = 0   # --mode fid: training items the reference statistics are computed from (0 = all)
    latent_draws: int = 8          # latent models: draws z ~ q(z|x) per item of the latent bound
    latent_prior: str = "ode"      # latent models: log p_theta(z) by the ODE or the ELBO (likelihood/latent.py)

    @property
    def likelihood_kwargs(self) -> dict:
        """Keyword arguments of ``samplers.log_likelihood``."""
        return {"trace": self.trace, "method": self.method, "rtol": self.rtol, "atol": self.atol,
                "eps": self.eps}


# ---------------------------------------------------------------------------------------- training loop
@dataclass(frozen=True)
class Accel:
    """GPU performance switches (``runtime.resolve_accel`` turns them off off CUDA)."""

    bf16: bool = False
    compile: bool = False
    channels_last: bool = False
    tf32: bool = False


@dataclass(frozen=True)
class TrainOptions:
    batch_size: int                # the global batch
    n_iters: int
    ema_rate: float
    log_freq: int
    eval_freq: int
    checkpoint_freq: int
    snapshot_freq: int
    keep_last: int
    max_nonfinite_steps: int       # consecutive skipped updates before the run stops
    exit_zero_on_signal: bool      # exit status 0 (else 128 + signal) after SIGTERM / SIGINT
    snapshot_sampling: bool
    snapshot_num_samples: int
    threads: int                   # intra-op CPU threads; 0 = auto (runtime.choose_threads)
    progress_bar: bool
    tensorboard: bool
    accel: Accel = field(default_factory=Accel)
    label_dropout: float = 0.0     # probability of the null label (class-conditional models)
    eval_quality_samples: int = 0  # samples drawn at every eval for a KID or FD against the held-out items (0 = off)
    eval_quality_metric: str = "kid"   # kid | fid
    cond_noise_max: float = 0.0    # image-conditioned: augmentation levels s ~ U[0, cond_noise_max]


# ---------------------------------------------------------------------------------------- distillation
DISTILL_METHODS = ("cd", "ct", "progressive")
CONSISTENCY_METHODS = ("cd", "ct")         # students sampled with sampling.method = consistency


@dataclass(frozen=True)
class DistillOptions:
    """``--mode distill``: a few-step student (``scoresde/distill``), trained by the training loop."""

    method: str                    # cd (consistency distillation) | ct (consistency training) | progressive
    teacher_workdir: str | None    # cd / progressive: the work directory of the trained teacher
    init_from_teacher: bool        # start the student from the teacher's EMA weights
    grid_size: int                 # cd: N, levels of the Karras grid the teacher steps between
    solver: str                    # cd: the teacher's ODE step, heun | ddim
    distance: str                  # cd: l2 | pseudo_huber
    target_decay: float            # cd: EMA decay mu of the target network theta^-
    ct_s0: int                     # ct: N(k) starts at s0 + 1 levels ...
    ct_s1: int                     # ... and doubles up to s1 + 1
    sigma_data: float              # cd / ct: sigma_data of c_skip, c_out, c_in
    eps: float                     # cd / ct: the boundary time, f(x, eps) = x
    pd_start_steps: int            # progressive: the teacher's DDIM steps in the first round
    pd_rounds: int                 # progressive: halvings; the student takes pd_start_steps / 2^pd_rounds steps

    @property
    def is_consistency(self) -> bool:
        return self.method in CONSISTENCY_METHODS

    @property
    def student_steps(self) -> int:
        """progressive: the DDIM steps of the final student."""
        return self.pd_start_steps // 2 ** self.pd_rounds

    @property
    def describe(self) -> str:
        """What the number called "loss" is, in one line."""
        return {"cd": f"consistency distillation d(f(x_t_n+1), f^-(x^_t_n)), d = {self.distance}, {self.solver} teacher "
                      f"step on {self.grid_size} levels (Song et al. 2023, Alg. 2)",
                "ct": "improved consistency training, pseudo-Huber, lognormal levels (Song & Dhariwal 2023)",
                "progressive": f"progressive distillation {self.pd_start_steps} -> {self.student_steps} DDIM steps, "
                               f"truncated-SNR weighted |x^ - x~|^2 (Salimans & Ho 2022, Alg. 2)"}[self.method] + \
            "; per sample; lower is better"


# ---------------------------------------------------------------------------------------- first stage
@dataclass(frozen=True)
class AutoencoderOptions:
    """``--mode train_autoencoder``: the first stage (``models.KLAutoencoder``) and its loss's KL weight;
    the loop (steps, batch, checkpoints) and the optimiser are ``TrainOptions`` / ``OptimOptions``."""

    latent_channels: int = 4       # c
    downsampling: int = 2          # f = 2^n_down: latents (c, H/f, W/f)
    channels: int = 32             # width of the first level
    beta: float = 1.0              # loss -log p(x|z) + beta KL(q(z|x) || N(0, I))
    decoder_std: float = 0.1       # s of p(x|z) = N(decode(z), s^2 I) (its start value when learned)
    learn_decoder_std: bool = True

    def build(self, in_channels: int) -> KLAutoencoder:
        return KLAutoencoder(in_channels=in_channels, latent_channels=self.latent_channels, channels=self.channels,
                             n_down=self.downsampling.bit_length() - 1, decoder_std=self.decoder_std,
                             learn_decoder_std=self.learn_decoder_std)


# ---------------------------------------------------------------------------------------- a run
@dataclass(frozen=True)
class RunOptions:
    """Everything a mode needs, as plain values. ``config_json`` is the resolved config, a record for
    people stored with checkpoints and results: not part of the options' JSON nor of their equality."""

    seed: int
    device: str                    # auto | cpu | cuda
    data: DataOptions
    sde: SDEOptions
    network: NetworkOptions
    loss: LossOptions
    optim: OptimOptions
    sampler: SamplerOptions
    eval: EvalOptions
    train: TrainOptions
    distill: DistillOptions | None = None   # --mode distill only (None: a score model trained by --mode train)
    autoencoder: AutoencoderOptions = field(default_factory=AutoencoderOptions)
    config_json: str = field(default="{}", compare=False)

    def to_json(self) -> str:
        """The options as JSON (``config_json`` left out); ``from_json`` reads it back equal."""
        plain = to_plain(self, "options")
        del plain["config_json"]
        return json.dumps(plain, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "RunOptions":
        """The options ``to_json`` wrote; ``ValueError`` names a field that is unknown, missing or of the
        wrong form. Fields added since (those with defaults) take their defaults."""
        return from_plain(cls, json.loads(text), "options")


# ---------------------------------------------------------------------------------------- JSON
def to_plain(value, path: str):
    """``value`` as JSON's types: option objects and mappings as objects (string keys), tuples as
    arrays. Anything ``from_plain`` would not give back equal (a list, a set, an object) is a ``ValueError``."""
    if is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name), f"{path}.{f.name}") for f in fields(value)}
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ValueError(f"{path} must have string keys to be stored as JSON, got {list(value)!r}")
        return {key: to_plain(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, tuple):
        return [to_plain(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{path} must be None, a bool, number, string, tuple or mapping of those to be stored as "
                     f"JSON, got {type(value).__name__} {value!r}")


def from_plain(cls: type, data, path: str):
    """The option object ``cls`` from ``to_plain``'s output."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a JSON object of {cls.__name__}'s fields, got {data!r}")
    known = {f.name: f for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}; {cls.__name__} has {list(known)}")
    missing = [name for name, f in known.items()
               if name not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ValueError(f"{path}: missing fields {missing} of {cls.__name__}")
    hints = {name: option_class(hint) for name, hint in typing.get_type_hints(cls).items()}
    return cls(**{name: from_plain(hints[name], value, f"{path}.{name}")
                  if hints[name] is not None and value is not None else plain_value(value)
                  for name, value in data.items()})


def option_class(hint) -> type | None:
    """The option class a field holds (``X`` of ``X`` or ``X | None``), else ``None``."""
    if is_dataclass(hint):
        return hint
    found = [arg for arg in typing.get_args(hint) if is_dataclass(arg)]
    return found[0] if len(found) == 1 and type(None) in typing.get_args(hint) else None


def plain_value(value):
    """A JSON value as options hold it: arrays as tuples, objects as read-only mappings."""
    if isinstance(value, list):
        return tuple(plain_value(item) for item in value)
    if isinstance(value, dict):
        return frozen_mapping({key: plain_value(item) for key, item in value.items()})
    return value
