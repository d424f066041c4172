"""The edge where the ml_collections config stops. ``options_from_config(config)``:

1. checks that the config has exactly the fields of ``configs/default.py`` (an unknown field, e.g. a
   typo, or a missing one is a ``ValueError`` naming it);
2. checks every value any mode will use, and the combinations that cannot work, before any work
   starts (each error names the field, its value and what is allowed);
3. maps each field explicitly onto the argument it feeds, in one frozen option object per concern
   (``scoresde/run/options.py``).

Nothing downstream sees the config.
"""
from __future__ import annotations

import inspect
import math
import re

import ml_collections
import torch

from scoresde import samplers
from scoresde.configs.default import get_default_config, use_ddpmpp, use_ncsnpp
from scoresde.models import MODELS, PARAMETERIZATIONS
from scoresde.sde_lib import SDE, SDES
from scoresde.utils import check_choice, check_float, check_int
from scoresde.data.datasets import IMAGE_DATASETS, ITEM_SHAPES, NUM_CLASSES, dataset_names
from scoresde.run.distributed import DEVICES
from scoresde.train.losses import LOSSES
from scoresde.train.optim import OPTIMIZERS
from scoresde.evaluate.heldout import BOUND_NAMES, CHAIN_DECODERS, bounds_that_apply
from scoresde.run.options import (SAMPLING_METHODS, Accel, BoundOptions, DataOptions, EvalOptions, LossOptions,
                              NetworkOptions, OptimOptions, RunOptions, SamplerOptions, SDEOptions, TrainOptions,
                              frozen_mapping)

# The process's constructor arguments, per process: argument -> config field.
SDE_ARGS = {
    "vpsde": {"beta_min": "model.beta_min", "beta_max": "model.beta_max", "N": "model.num_scales"},
    "subvpsde": {"beta_min": "model.beta_min", "beta_max": "model.beta_max", "N": "model.num_scales"},
    "vesde": {"sigma_min": "model.sigma_min", "sigma_max": "model.sigma_max", "N": "model.num_scales"},
    "cosine_vpsde": {"N": "model.num_scales"},
    "rectified_flow": {"N": "model.num_scales"},
    "edm": {"sigma_min": "model.sigma_min", "sigma_max": "model.sigma_max", "N": "model.num_scales"},
}
# The network's constructor arguments, per network (the data shape is added from the data).
_UNET_ARGS = {name: f"model.{name}" for name in (
    "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type", "embedding_type",
    "fourier_scale", "fir", "fir_kernel", "skip_rescale", "resamp_with_conv", "init_scale", "progressive",
    "progressive_input", "progressive_combine")}
_MLP_ARGS = {"hidden": "model.hidden", "n_blocks": "model.n_blocks", "embedding_type": "model.embedding_type",
             "fourier_scale": "model.fourier_scale", "num_classes": "model.num_classes"}
_CLASSIFIER_UNET_ARGS = {arg: field for arg, field in _UNET_ARGS.items()
                         if arg not in ("progressive", "progressive_input", "progressive_combine")}
NETWORK_ARGS = {
    "mlp": _MLP_ARGS,
    "ddpmpp": {**_UNET_ARGS, "num_classes": "model.num_classes"},
    "ncsnpp": {**_UNET_ARGS, "num_classes": "model.num_classes"},
    "classifier_mlp": _MLP_ARGS,
    "classifier_unet": {**_CLASSIFIER_UNET_ARGS, "num_classes": "model.num_classes"},
}
CLASSIFIERS = ("classifier_mlp", "classifier_unet")
# Guidance of --mode sample: none, classifier-free (one network trained with label dropout), classifier.
GUIDANCE = ("none", "cfg", "classifier")
# Losses defined in continuous time (the others are on the discrete chain).
CONTINUOUS_LOSSES = ("dsm", "flow", "edm", "classifier")
# The likelihood's ODE solvers: the adaptive ones (the fixed-step ones would need a step count).
LIKELIHOOD_METHODS = samplers.ode.ADAPTIVE_METHODS + samplers.ode.SCIPY_METHODS


# ---------------------------------------------------------------------------------------- fields
def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """``{"training.sde": "vpsde", ...}``: every leaf of ``config`` by its dotted path."""
    fields = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            fields.update(leaf_fields(value, path + "."))
        else:
            fields[path] = value
    return fields


def schema_fields() -> dict:
    """The fields (and defaults) of ``configs/default.py``: the only fields a config may have."""
    return leaf_fields(get_default_config())


def check_field_names(config: ml_collections.ConfigDict) -> None:
    """``ValueError`` naming the first unknown field (e.g. a typo) or missing field."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"the config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    known, present = schema_fields(), leaf_fields(config)
    for path in present:
        if path not in known:
            section = path.rsplit(".", 1)[0] if "." in path else ""
            siblings = sorted(p for p in known if p.rsplit(".", 1)[0] == section and "." in p) if section else []
            hint = f"; fields of config.{section}: {[p.split('.')[-1] for p in siblings]}" if siblings else ""
            raise ValueError(f"config.{path} is not a config field (configs/default.py lists them all){hint}")
    for path in known:
        if path not in present:
            raise ValueError(f"config.{path} is missing; every config starts from "
                             f"configs.default.get_default_config() (default: {known[path]!r})")


_SECTION_OF = {"t": "training", "d": "data", "m": "model", "o": "optim", "s": "sampling", "e": "eval", "config": ""}
_FIELD_LINE = re.compile(r"^\s+(t|d|m|o|s|e|config)\.(\w+) = (.+?)\s+# (.+)$")


def field_comments() -> dict:
    """``{"training.sde": "the process: vpsde | ...", ...}``: the one-line comment of each field, read
    from ``configs/default.py`` (where every field is defined, with its comment)."""
    import scoresde.configs.default as default_module

    comments = {}
    for line in inspect.getsource(default_module).splitlines():
        match = _FIELD_LINE.match(line)
        if match:
            section = _SECTION_OF[match.group(1)]
            comments[f"{section}.{match.group(2)}" if section else match.group(2)] = match.group(4)
    return comments


def config_help() -> str:
    """Every config field with its default and comment, section by section (``main.py --config_help``)."""
    comments, defaults, lines, section = field_comments(), schema_fields(), [], None
    ordered = [p for p in comments if p in defaults] + [p for p in defaults if p not in comments]
    for path, default in ((p, defaults[p]) for p in ordered):
        head = path.rsplit(".", 1)[0] if "." in path else ""
        if head != section:
            section = head
            lines.append(f"\n[{section or 'top level'}]")
        lines.append(f"  {path} = {default!r}".ljust(48) + f"  # {comments.get(path, '')}")
    return "\n".join(lines).lstrip("\n")


# ---------------------------------------------------------------------------------------- values
_CHOICES = {
    "device": lambda: DEVICES,
    "data.dataset": dataset_names,
    "training.sde": SDES.names,
    "training.loss": LOSSES.names,
    "model.name": lambda: sorted(set(MODELS.names()) & set(NETWORK_ARGS)),
    "model.parameterization": lambda: ("auto",) + tuple(PARAMETERIZATIONS),
    "optim.optimizer": lambda: OPTIMIZERS,
    "sampling.method": SAMPLING_METHODS.names,
    "sampling.predictor": samplers.PREDICTORS.names,
    "sampling.corrector": samplers.CORRECTORS.names,
    "sampling.order": lambda: samplers.FAST_ORDERS,
    "sampling.solver": lambda: samplers.FAST_SOLVERS,
    "sampling.ode_method": lambda: samplers.ODE_METHODS,
    "eval.trace": lambda: samplers.TRACES,
    "sampling.guidance": lambda: GUIDANCE,
    "sampling.inpaint_method": lambda: samplers.INPAINT_METHODS,
    "eval.method": lambda: LIKELIHOOD_METHODS,
    "eval.chain_variance": lambda: samplers.VLB_VARIANCES,
    "eval.chain_decoder": lambda: CHAIN_DECODERS,
}
_INTS = {"seed": 0, "data.num_train": 0, "training.batch_size": 1, "training.n_iters": 0,
         "training.log_freq": 1, "training.eval_freq": 1, "training.checkpoint_freq": 1,
         "training.snapshot_freq": 1, "training.keep_last": 1, "training.max_nonfinite_steps": 1,
         "training.snapshot_num_samples": 0, "training.threads": 0,
         "model.num_scales": 1, "model.hidden": 1, "model.n_blocks": 0, "model.nf": 1, "model.num_res_blocks": 1,
         "optim.warmup": 0, "sampling.n_steps": 0, "sampling.steps": 1, "sampling.num_samples": 1,
         "sampling.batch_size": 1, "sampling.resample": 1, "eval.quality_samples": 4, "model.num_classes": 0, "eval.batch_size": 1, "eval.num_samples": 1, "eval.true_nll_samples": 2,
         "eval.bound_items": 0, "eval.bound_rows": 1, "eval.elbo_samples": 2, "eval.vlb_levels": 0,
         "eval.iw_repeats": 1}
_OPEN_UNIT = dict(low=0.0, high=1.0, open_low=True, open_high=True)
_POSITIVE = dict(low=0.0, open_low=True)
_FLOATS = {"training.eps": _OPEN_UNIT, "model.ema_rate": dict(low=0.0, high=1.0),
           "model.sigma_min": _POSITIVE, "model.sigma_max": _POSITIVE, "model.beta_min": _POSITIVE,
           "model.beta_max": _POSITIVE, "model.fourier_scale": _POSITIVE,
           "model.dropout": dict(low=0.0, high=1.0, open_high=True), "model.init_scale": dict(low=0.0),
           "optim.lr": _POSITIVE, "optim.beta1": dict(low=0.0, high=1.0, open_high=True), "optim.eps": _POSITIVE,
           "optim.weight_decay": dict(low=0.0), "optim.grad_clip": dict(low=0.0), "sampling.snr": _POSITIVE,
           "sampling.eps": _OPEN_UNIT, "sampling.eta": dict(low=0.0), "sampling.rtol": _POSITIVE,
           "sampling.churn": dict(low=0.0), "sampling.s_noise": _POSITIVE, "model.sigma_data": _POSITIVE,
           "training.p_std": _POSITIVE, "training.p_mean": {}, "training.label_dropout": dict(low=0.0, high=1.0,
                                                                                               open_high=True),
           "sampling.guidance_scale": {}, "sampling.threshold": dict(low=0.0, high=1.0),
           "sampling.atol": _POSITIVE, "eval.rtol": _POSITIVE, "eval.atol": _POSITIVE,
           "eval.likelihood_eps": _OPEN_UNIT}
_INT_TUPLES = {"model.ch_mult": 1, "model.attn_resolutions": 1, "eval.iw_k": 1}


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_int_tuple(name: str, value, minimum: int) -> None:
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ValueError(f"{name} must be a tuple of integers >= {minimum}, got {value!r}")


def _check_kernel(name: str, value) -> None:
    if not isinstance(value, (tuple, list)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{name} must be a non-empty tuple of finite numbers, got {value!r}")


def check_values(config: ml_collections.ConfigDict) -> None:
    """Each field on its own: choices, integers, numbers in range, booleans, tuples."""
    fields = leaf_fields(config)
    for path, allowed in _CHOICES.items():
        check_choice(f"config.{path}", fields[path], allowed())
    for path, minimum in _INTS.items():
        check_int(f"config.{path}", fields[path], minimum)
    for path, interval in _FLOATS.items():
        check_float(f"config.{path}", fields[path], **interval)
    for path, minimum in _INT_TUPLES.items():
        _check_int_tuple(f"config.{path}", fields[path], minimum)
    _check_kernel("config.model.fir_kernel", fields["model.fir_kernel"])
    for path in ("model.pretrained", "model.pretrained_config", "sampling.classifier_workdir", "eval.inception_weights",
                 "sampling.inpaint_data", "sampling.mask", "sampling.label"):
        if not isinstance(fields[path], str):
            raise ValueError(f"config.{path} must be a string, got {fields[path]!r}")
    if not isinstance(fields["data.root"], str):
        raise ValueError(f"config.data.root must be a string (a folder, or '' for ./data/<dataset>), "
                         f"got {fields['data.root']!r}")
    for path, default in schema_fields().items():
        if isinstance(default, bool):
            _check_bool(f"config.{path}", fields[path])


# ---------------------------------------------------------------------------------------- combinations
def check_combinations(config: ml_collections.ConfigDict) -> None:
    """Fields that are fine alone but cannot work together."""
    t, m = config.training, config.model
    continuous_loss = t.loss in CONTINUOUS_LOSSES
    if t.continuous != continuous_loss:
        raise ValueError(f"config.training.continuous must be {continuous_loss} for training.loss={t.loss!r} "
                         f"({', '.join(CONTINUOUS_LOSSES)} are continuous-time, the others discrete), "
                         f"got {t.continuous!r}")
    if m.parameterization == "velocity" and not t.continuous:
        raise ValueError("config.model.parameterization='velocity' needs training.continuous=True (the discrete "
                         "chain has no velocity)")
    if not continuous_loss and (t.likelihood_weighting or t.importance_sampling):
        raise ValueError(f"config.training.likelihood_weighting / importance_sampling apply to "
                         f"training.loss='dsm' only, got loss={t.loss!r}")
    if t.importance_sampling and not t.likelihood_weighting:
        raise ValueError("config.training.importance_sampling=True requires training.likelihood_weighting=True")
    if m.beta_max <= m.beta_min:
        raise ValueError(f"config.model.beta_max must be > model.beta_min, got beta_min={m.beta_min!r}, "
                         f"beta_max={m.beta_max!r}")
    if m.sigma_max <= m.sigma_min:
        raise ValueError(f"config.model.sigma_max must be > model.sigma_min, got sigma_min={m.sigma_min!r}, "
                         f"sigma_max={m.sigma_max!r}")
    if m.parameterization == "auto" and m.scale_by_sigma and _default_parameterization(t.sde) != "score":
        raise ValueError(f"config.model.scale_by_sigma=True applies to a 'score' output, but training.sde="
                         f"{t.sde!r} defaults to {_default_parameterization(t.sde)!r}; set "
                         f"model.parameterization='score' or scale_by_sigma=False")
    if m.parameterization not in ("auto", "score") and m.scale_by_sigma:
        raise ValueError(f"config.model.scale_by_sigma=True applies to model.parameterization='score' only, "
                         f"got {m.parameterization!r}")
    s = config.sampling
    if s.method == "pc":
        try:
            samplers.check_pc_options(s.predictor, s.corrector, s.snr, s.n_steps, s.probability_flow)
        except ValueError as err:
            raise ValueError(f"config.sampling (method 'pc'): {err}") from err


def label_classes(config: ml_collections.ConfigDict) -> int:
    """How many classes ``sampling.label`` may name: the model's, or the data's under classifier guidance
    (which can steer an unconditional model)."""
    if config.sampling.guidance == "classifier":
        return NUM_CLASSES.get(config.data.dataset, 0)
    return config.model.num_classes


def parse_label(value, num_classes: int) -> int | str | None:
    """``config.sampling.label``: ``""`` -> None, ``"all"``, or a class index in ``[0, num_classes)``."""
    text = str(value).strip()
    if text == "":
        return None
    if num_classes == 0:
        raise ValueError(f"config.sampling.label={value!r} needs a class-conditional model (model.num_classes > 0) "
                         f"or sampling.guidance='classifier'; this model is unconditional")
    if text == "all":
        return "all"
    if not re.fullmatch(r"\d+", text) or int(text) >= num_classes:
        raise ValueError(f"config.sampling.label must be '', 'all' or a class index in [0, {num_classes}), "
                         f"got {value!r}")
    return int(text)


def check_conditioning(config: ml_collections.ConfigDict) -> None:
    """Class labels, label dropout, classifiers and guidance fit together and fit the data."""
    t, m, s = config.training, config.model, config.sampling
    classes = NUM_CLASSES.get(config.data.dataset, 0)
    is_classifier = m.name in CLASSIFIERS
    if (t.loss == "classifier") != is_classifier:
        raise ValueError(f"config.training.loss='classifier' trains a classifier network (model.name in "
                         f"{list(CLASSIFIERS)}) and a classifier network needs it; got loss={t.loss!r}, "
                         f"model.name={m.name!r}")
    if (is_classifier or m.num_classes) and m.num_classes != classes:
        raise ValueError(f"config.model.num_classes must be {classes}, the number of classes of data.dataset="
                         f"{config.data.dataset!r}, for a {'classifier' if is_classifier else 'class-conditional model'}; "
                         f"got {m.num_classes}")
    if t.label_dropout and (is_classifier or not m.num_classes):
        raise ValueError(f"config.training.label_dropout={t.label_dropout} needs a class-conditional score model "
                         f"(model.num_classes > 0, not a classifier); got model.name={m.name!r}, "
                         f"num_classes={m.num_classes}")
    label = parse_label(s.label, label_classes(config))
    if s.guidance != "none" and label is None:
        raise ValueError(f"config.sampling.guidance={s.guidance!r} steers towards a class: set sampling.label to "
                         f"a class index or 'all'")
    if s.guidance == "cfg" and not t.label_dropout:
        raise ValueError("config.sampling.guidance='cfg' needs a model trained with label dropout "
                         "(training.label_dropout > 0), which learns the unconditional score too; this one was not")
    if s.guidance == "classifier" and not s.classifier_workdir:
        raise ValueError("config.sampling.guidance='classifier' needs sampling.classifier_workdir, the work "
                         "directory of a classifier trained with training.loss='classifier'")
    if config.eval.sample_quality and config.data.dataset not in IMAGE_DATASETS.names():
        raise ValueError(f"config.eval.sample_quality applies to image data (FD / KID in a feature space of "
                         f"images); data.dataset={config.data.dataset!r} is not images (its eval reports the NLL "
                         f"gap to the true density instead)")
    if s.threshold and s.method not in ("fast", "ddim"):
        raise ValueError(f"config.sampling.threshold={s.threshold} (dynamic thresholding of the data prediction) "
                         f"applies to sampling.method 'fast' or 'ddim', got {s.method!r}")
    if s.guidance == "classifier" and m.num_classes and not t.label_dropout:
        raise ValueError("config.sampling.guidance='classifier' guides an unconditional score: this model is "
                         "class-conditional without label dropout, so it has none")


def _default_parameterization(sde_name: str) -> str:
    return SDES.get(sde_name).default_parameterization


def _check_times(config: ml_collections.ConfigDict, sde: SDE) -> None:
    for path in ("training.eps", "sampling.eps", "eval.likelihood_eps"):
        value = leaf_fields(config)[path]
        if not value < sde.T:
            raise ValueError(f"config.{path} must lie in (0, T) = (0, {sde.T}) for training.sde="
                             f"{config.training.sde!r}, got {value!r}")


def _check_labels(config: ml_collections.ConfigDict, sde: SDE) -> None:
    """The network must see finite labels at every time a mode uses, and a Fourier embedding (of
    ``log label``) positive ones; for discrete models every level of the chain is used."""
    t = config.training
    if t.continuous:
        times = torch.tensor([min(t.eps, config.sampling.eps, config.eval.likelihood_eps), sde.T],
                             dtype=torch.float64)
    else:
        times = torch.linspace(0.0, sde.T, sde.N, dtype=torch.float64)
    labels = sde.noise_label(times, t.continuous).double()
    if not bool(torch.isfinite(labels).all()):
        raise ValueError(f"training.sde={t.sde!r} gives non-finite network labels (continuous={t.continuous})")
    if config.model.embedding_type == "fourier" and not bool((labels > 0).all()):
        where = float(times[labels <= 0][0])
        raise ValueError(f"config.model.embedding_type='fourier' embeds log(noise label), but training.sde="
                         f"{t.sde!r} (continuous={t.continuous}) gives label {labels.min().item():g} at t={where:g}; "
                         f"use 'positional'")


def _check_network(network: NetworkOptions, dataset: str) -> None:
    """The network's own argument checks, on the meta device (no memory, no compute)."""
    shape = ITEM_SHAPES[dataset]
    rank = MODELS.get(network.name).data_rank
    if len(shape) != rank:
        kind = "vector data (D,)" if rank == 1 else "images (C, H, W)"
        raise ValueError(f"config.model.name={network.name!r} takes {kind}, but data.dataset={dataset!r} has "
                         f"items of shape {shape}")
    try:
        with torch.device("meta"):
            network.build(shape)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.model ({network.name}): {err}") from err


# ---------------------------------------------------------------------------------------- mapping
def _data(config) -> DataOptions:
    d = config.data
    return DataOptions(dataset=d.dataset, root=d.root or None, num_train=d.num_train,
                       num_test=config.eval.num_samples, centered=d.centered,
                       uniform_dequantization=d.uniform_dequantization, random_flip=d.random_flip)


def _sde(config) -> SDEOptions:
    name = config.training.sde
    fields = leaf_fields(config)
    return SDEOptions(name=name, kwargs=frozen_mapping({arg: fields[f] for arg, f in SDE_ARGS[name].items()}))


def _network(config) -> NetworkOptions:
    m, fields = config.model, leaf_fields(config)
    if m.name not in NETWORK_ARGS:
        raise ValueError(f"config.model.name={m.name!r} is a registered network without a config mapping; "
                         f"add its arguments to training.factory.NETWORK_ARGS")
    kwargs = {arg: fields[f] for arg, f in NETWORK_ARGS[m.name].items()}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return NetworkOptions(name=m.name, kwargs=frozen_mapping(kwargs), continuous=config.training.continuous,
                          parameterization=None if m.parameterization == "auto" else m.parameterization,
                          scale_by_sigma=m.scale_by_sigma, sigma_data=m.sigma_data,
                          pretrained=m.pretrained or None, pretrained_config=m.pretrained_config or None)


def _loss(config) -> LossOptions:
    t = config.training
    reduce = "mean" if t.reduce_mean else "sum"
    if t.loss == "dsm":
        kwargs = {"reduce": reduce, "likelihood_weighting": t.likelihood_weighting,
                  "importance_sampling": t.importance_sampling, "eps": t.eps}
        noise = {"importance_sampling": t.importance_sampling, "eps": t.eps}
    elif t.loss == "flow":                      # t ~ U(eps, T), velocity target
        kwargs, noise = {"reduce": reduce, "eps": t.eps}, {"eps": t.eps}
    elif t.loss == "edm":                       # ln sigma ~ N(p_mean, p_std^2), EDM's weight
        kwargs = {"reduce": reduce, "sigma_data": config.model.sigma_data, "p_mean": t.p_mean,
                  "p_std": t.p_std, "eps": t.eps}
        noise = {"p_mean": t.p_mean, "p_std": t.p_std, "eps": t.eps}
    elif t.loss == "classifier":                # cross-entropy at t ~ U(eps, T)
        kwargs, noise = {"eps": t.eps}, {"eps": t.eps}
    else:                                       # ddpm / smld / v: uniform levels of the discrete chain
        kwargs, noise = {"reduce": reduce}, {}
    return LossOptions(name=t.loss, kwargs=frozen_mapping(kwargs), noise_kwargs=frozen_mapping(noise))


def _optim(config) -> OptimOptions:
    o = config.optim
    return OptimOptions(optimizer=o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps, weight_decay=o.weight_decay,
                        warmup=o.warmup, grad_clip=o.grad_clip)


def _sampler(config) -> SamplerOptions:
    s = config.sampling
    return SamplerOptions(method=s.method, predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                          n_steps=s.n_steps, probability_flow=s.probability_flow, denoise=s.denoise, eps=s.eps,
                          steps=s.steps, order=s.order, solver=s.solver, eta=s.eta, churn=s.churn,
                          s_noise=s.s_noise, ode_method=s.ode_method, rtol=s.rtol, atol=s.atol,
                          num_samples=s.num_samples, batch_size=s.batch_size,
                          label=parse_label(s.label, label_classes(config)), guidance=s.guidance,
                          guidance_scale=s.guidance_scale, classifier_workdir=s.classifier_workdir or None,
                          threshold=s.threshold or None, mask=s.mask, inpaint_method=s.inpaint_method,
                          resample=s.resample, inpaint_data=s.inpaint_data or None)


def _eval(config) -> EvalOptions:
    e = config.eval
    return EvalOptions(batch_size=e.batch_size, num_samples=e.num_samples, likelihood=e.likelihood,
                       trace=e.trace, method=e.method, rtol=e.rtol, atol=e.atol, eps=e.likelihood_eps,
                       true_nll_samples=e.true_nll_samples, bounds=_bounds(config),
                       sample_quality=e.sample_quality, quality_samples=e.quality_samples,
                       inception_weights=e.inception_weights or None)


def requested_bounds(config: ml_collections.ConfigDict) -> tuple:
    """``config.eval.bounds`` as names of ``BOUND_NAMES`` (``"all"``: every one that applies to the model);
    ``ValueError`` for an unknown name, a bound that does not apply to the model, or sizes it cannot use."""
    e, t = config.eval, config.training
    if not isinstance(e.bounds, str):
        raise ValueError(f"config.eval.bounds must be a comma-separated string, got {e.bounds!r}")
    applies = bounds_that_apply(t.continuous)
    words = [w.strip() for w in e.bounds.split(",") if w.strip()]
    for word in words:
        if word not in BOUND_NAMES + ("all",):
            raise ValueError(f"config.eval.bounds: unknown bound {word!r} in {e.bounds!r}; available: "
                             f"{', '.join(BOUND_NAMES)}, all (every one that applies), or '' for none")
        if word != "all" and word not in applies:
            raise ValueError(f"config.eval.bounds={e.bounds!r}: {word!r} applies to continuous-time models only "
                             f"(training.continuous=True), but this model is discrete-time (training.continuous="
                             f"False, loss {t.loss!r}); the bounds that apply to it are {', '.join(applies)}")
    names = tuple(n for n in applies if n in words or "all" in words)
    if e.chain_decoder == "discretized" and len(ITEM_SHAPES[config.data.dataset]) == 1:
        raise ValueError(f"config.eval.chain_decoder='discretized' applies to image data (grey levels), but "
                         f"data.dataset={config.data.dataset!r} is continuous; use 'density'")
    if {"vlb", "iw"} & set(names) and config.model.num_scales < 2:
        raise ValueError(f"config.eval.bounds={e.bounds!r}: vlb / iw need the chain of model.num_scales >= 2 "
                         f"levels, got {config.model.num_scales}")
    if "iw" in names and (not e.iw_k or any(max(e.iw_k) % k for k in e.iw_k)):
        raise ValueError(f"config.eval.iw_k must be a non-empty tuple whose largest K is a multiple of every K "
                         f"(one set of paths serves them all), got {tuple(e.iw_k)!r}")
    return names


def _bounds(config) -> BoundOptions:
    e = config.eval
    return BoundOptions(names=requested_bounds(config), items=e.bound_items, rows=e.bound_rows,
                        elbo_samples=e.elbo_samples, vlb_levels=e.vlb_levels, iw_k=tuple(e.iw_k),
                        iw_repeats=e.iw_repeats, variance=e.chain_variance, decoder=e.chain_decoder,
                        score_times="log_snr" if config.training.continuous else "grid", eps=e.likelihood_eps)


def _train(config) -> TrainOptions:
    t = config.training
    return TrainOptions(
        batch_size=t.batch_size, n_iters=t.n_iters, ema_rate=config.model.ema_rate, log_freq=t.log_freq,
        eval_freq=t.eval_freq, checkpoint_freq=t.checkpoint_freq, snapshot_freq=t.snapshot_freq,
        keep_last=t.keep_last, max_nonfinite_steps=t.max_nonfinite_steps,
        exit_zero_on_signal=t.exit_zero_on_signal, snapshot_sampling=t.snapshot_sampling,
        snapshot_num_samples=t.snapshot_num_samples, threads=t.threads, progress_bar=t.progress_bar,
        tensorboard=t.tensorboard, label_dropout=t.label_dropout,
        accel=Accel(bf16=t.bf16, compile=t.compile, channels_last=t.channels_last, tf32=t.tf32))


def network_defaults(name: str) -> dict:
    """The constructor arguments of network ``name`` (data shape excluded) as ``configs/default.py``
    sets them, with the DDPM++ / NCSN++ preset applied: the one source of network defaults."""
    config = get_default_config()
    config.model.name = name
    {"ddpmpp": use_ddpmpp, "ncsnpp": use_ncsnpp}.get(name, lambda model: None)(config.model)
    return dict(_network(config).kwargs)


def _built_sde(options: SDEOptions) -> SDE:
    try:
        return options.build()
    except ValueError as err:
        raise ValueError(f"config.model ({options.name}): {err}") from err


def options_from_config(config: ml_collections.ConfigDict) -> RunOptions:
    """Validate ``config`` completely and return its plain options; ``ValueError`` names the first
    bad field, its value and what is allowed."""
    check_field_names(config)
    check_values(config)
    check_combinations(config)
    check_conditioning(config)
    requested_bounds(config)
    options = RunOptions(seed=config.seed, device=config.device, data=_data(config), sde=_sde(config),
                         network=_network(config), loss=_loss(config), optim=_optim(config),
                         sampler=_sampler(config), eval=_eval(config), train=_train(config),
                         config_json=config.to_json(indent=2, sort_keys=True))
    sde = _built_sde(options.sde)
    _check_times(config, sde)
    _check_labels(config, sde)
    _check_network(options.network, options.data.dataset)
    return options


def validate_config(config: ml_collections.ConfigDict) -> None:
    """``options_from_config`` for its checks only."""
    options_from_config(config)
