"""Every check of a config, before any work starts: ``validate_config(config)``

1. checks that the config has exactly the fields of ``configs/default.py`` (an unknown field, e.g. a
   typo, or a missing one is a ``ValueError`` naming it);
2. checks each value on its own (``schema.py``'s choices, integers, ranges, tuples, strings, booleans);
3. checks the combinations that cannot work: loss and time, parameterisation, class labels and
   guidance, likelihood bounds, the times and noise labels the process gives, and the network's own
   argument checks (built on the meta device).

Each error names the field, its value and what is allowed.
"""
from __future__ import annotations

import math
import re

import torch

from scoresde import samplers
from scoresde.cli.schema import (CHOICES, CLASSIFIERS, CONTINUOUS_LOSSES, FLOATS, INT_TUPLES, INTS, NUMBER_TUPLES,
                                 STRINGS, VARIANCE_LOSSES, is_config, leaf_fields, network_kwargs, schema_fields, sde_kwargs,
                                 unknown_field)
from scoresde.data.datasets import IMAGE_DATASETS, dataset_classes, item_shape
from scoresde.data.latents import check_first_stage
from scoresde.evaluate.heldout import BOUND_NAMES, bounds_that_apply
from scoresde.models import MODELS, get_model
from scoresde.run.options import shape_kwargs
from scoresde.sde_lib import SDE, SDES, get_sde
from scoresde.utils import check_choice, check_float, check_int


# ---------------------------------------------------------------------------------------- fields
def check_field_names(config) -> None:
    """``ValueError`` naming the first unknown field (e.g. a typo, with the closest field) or missing field."""
    if not is_config(config):
        raise ValueError(f"the config must be an ml_collections.ConfigDict, got {type(config).__name__}")
    known, present = schema_fields(), leaf_fields(config)
    for path in present:
        if path not in known:
            raise ValueError(unknown_field(path, known, note=" (configs/default.py lists them all)"))
    for path in known:
        if path not in present:
            raise ValueError(f"config.{path} is missing; every config starts from "
                             f"configs.default.get_default_config() (default: {known[path]!r})")


# ---------------------------------------------------------------------------------------- values
def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_int_tuple(name: str, value, minimum: int) -> None:
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value):
        raise ValueError(f"{name} must be a tuple of integers >= {minimum}, got {value!r}")


def _check_number_tuple(name: str, value) -> None:
    if not isinstance(value, (tuple, list)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{name} must be a non-empty tuple of finite numbers, got {value!r}")


def _check_string(path: str, value) -> None:
    if not isinstance(value, str):
        what = " (a folder, or '' for ./data/<dataset>)" if path == "data.root" else ""
        raise ValueError(f"config.{path} must be a string{what}, got {value!r}")


def check_values(config) -> None:
    """Each field on its own: choices, integers, numbers in range, booleans, tuples, strings."""
    fields = leaf_fields(config)
    for path, allowed in CHOICES.items():
        check_choice(f"config.{path}", fields[path], allowed())
    for path, minimum in INTS.items():
        check_int(f"config.{path}", fields[path], minimum)
    for path, interval in FLOATS.items():
        check_float(f"config.{path}", fields[path], **interval)
    for path, minimum in INT_TUPLES.items():
        _check_int_tuple(f"config.{path}", fields[path], minimum)
    for path in NUMBER_TUPLES:
        _check_number_tuple(f"config.{path}", fields[path])
    for path in STRINGS:
        _check_string(path, fields[path])
    for path, default in schema_fields().items():
        if isinstance(default, bool):
            _check_bool(f"config.{path}", fields[path])


# ---------------------------------------------------------------------------------------- combinations
def _default_parameterization(sde_name: str) -> str:
    return SDES.get(sde_name).default_parameterization


def check_combinations(config) -> None:
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
    if not continuous_loss and t.likelihood_weighting:
        raise ValueError(f"config.training.likelihood_weighting applies to training.loss='dsm' only, got "
                         f"loss={t.loss!r}")
    if t.importance_sampling and t.loss not in ("dsm", "vlb"):
        raise ValueError(f"config.training.importance_sampling applies to training.loss 'dsm' or 'vlb', got "
                         f"loss={t.loss!r}")
    _check_learned_variance(config)
    if t.importance_sampling and t.loss == "dsm" and not t.likelihood_weighting:
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
    if s.method == "ddpm" and s.steps > m.num_scales:
        raise ValueError(f"config.sampling.steps={s.steps} (sampling.method 'ddpm': levels kept of the chain) must be "
                         f"between 1 and model.num_scales={m.num_scales}")
    if s.method == "pc":
        try:
            samplers.check_pc_options(s.predictor, s.corrector, s.snr, s.n_steps, s.probability_flow)
        except ValueError as err:
            raise ValueError(f"config.sampling (method 'pc'): {err}") from err


def check_distill(config) -> None:
    """The distill block's fields that must fit together (the teacher itself is checked when
    ``--mode distill`` reads it)."""
    d = config.distill
    if d.ct_s1 < d.ct_s0:
        raise ValueError(f"config.distill.ct_s1={d.ct_s1} must be >= distill.ct_s0={d.ct_s0} (the grid grows from "
                         f"s0 + 1 to s1 + 1 levels)")
    if d.pd_start_steps % 2 ** d.pd_rounds:
        raise ValueError(f"config.distill.pd_start_steps={d.pd_start_steps} must be divisible by 2^distill.pd_rounds="
                         f"{2 ** d.pd_rounds} (each round halves the steps), e.g. {2 ** (d.pd_rounds + 1)}")


def _check_learned_variance(config) -> None:
    """A learned variance (Nichol & Dhariwal 2021) is trained by the hybrid or vlb loss, and only those."""
    t, m = config.training, config.model
    trains_variance = t.loss in VARIANCE_LOSSES
    if trains_variance and not m.learn_variance:
        raise ValueError(f"config.training.loss={t.loss!r} trains a learned variance: it needs "
                         f"model.learn_variance=True (allowed losses without one: ddpm, smld, v, dsm, ...)")
    if m.learn_variance and not trains_variance:
        raise ValueError(f"config.model.learn_variance=True needs training.loss in {list(VARIANCE_LOSSES)} (the "
                         f"losses that train the variance), got {t.loss!r}")
    if m.learn_variance and m.name not in ("mlp", "ddpmpp", "ncsnpp"):
        raise ValueError(f"config.model.learn_variance=True applies to model.name mlp, ddpmpp or ncsnpp, got "
                         f"{m.name!r}")
    if m.learn_variance and m.parameterization in ("velocity", "edm"):
        raise ValueError(f"config.model.learn_variance=True needs model.parameterization auto, eps, x0, score or "
                         f"v, got {m.parameterization!r}")


# ---------------------------------------------------------------------------------------- conditioning
def label_classes(config) -> int:
    """How many classes ``sampling.label`` may name: the model's, or the data's under classifier guidance
    (which can steer an unconditional model)."""
    if config.sampling.guidance == "classifier":
        return data_classes(config)
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


def check_conditioning(config) -> None:
    """Class labels, label dropout, classifiers and guidance fit together and fit the data."""
    t, m, s = config.training, config.model, config.sampling
    classes = data_classes(config)
    is_classifier = m.name in CLASSIFIERS
    if (t.loss == "classifier") != is_classifier:
        raise ValueError(f"config.training.loss='classifier' trains a classifier network (model.name in "
                         f"{list(CLASSIFIERS)}) and a classifier network needs it; got loss={t.loss!r}, "
                         f"model.name={m.name!r}")
    if (is_classifier or m.num_classes) and m.num_classes != classes:
        raise ValueError(f"config.model.num_classes must be {classes}, the number of classes of data.dataset="
                         f"{config.data.dataset!r}, for a {'classifier' if is_classifier else 'class-conditional model'}; "
                         f"got {m.num_classes}")
    if t.label_dropout and (is_classifier or not (m.num_classes or m.cond_channels)):
        raise ValueError(f"config.training.label_dropout={t.label_dropout} needs a class-conditional score model "
                         f"(model.num_classes > 0, not a classifier) or an image-conditioned one (model.cond_channels "
                         f"> 0); got model.name={m.name!r}, num_classes={m.num_classes}")
    label = parse_label(s.label, label_classes(config))
    if s.guidance == "classifier" and m.cond_channels:
        raise ValueError("config.sampling.guidance='classifier' applies to class labels; an image-conditioned model "
                         "(model.cond_channels > 0) takes 'none' or 'cfg'")
    if s.guidance != "none" and label is None and not m.cond_channels:
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
    if config.training.eval_quality_samples and config.data.dataset not in IMAGE_DATASETS.names():
        raise ValueError(f"config.training.eval_quality_samples={config.training.eval_quality_samples} applies to "
                         f"image data (KID / FD in a feature space of images); data.dataset="
                         f"{config.data.dataset!r} is not images: set it to 0")
    if config.training.eval_quality_samples and is_classifier:
        raise ValueError("config.training.eval_quality_samples applies to score models; a classifier "
                         "(training.loss='classifier') draws no samples: set it to 0")
    if s.threshold and s.method not in ("fast", "ddim"):
        raise ValueError(f"config.sampling.threshold={s.threshold} (dynamic thresholding of the data prediction) "
                         f"applies to sampling.method 'fast' or 'ddim', got {s.method!r}")
    if s.guidance == "classifier" and m.num_classes and not t.label_dropout:
        raise ValueError("config.sampling.guidance='classifier' guides an unconditional score: this model is "
                         "class-conditional without label dropout, so it has none")


# ---------------------------------------------------------------------------------------- bounds
def requested_bounds(config) -> tuple:
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
    if e.chain_decoder == "discretized" and len(data_shape(config)) == 1:
        raise ValueError(f"config.eval.chain_decoder='discretized' applies to image data (grey levels), but "
                         f"data.dataset={config.data.dataset!r} is continuous; use 'density'")
    if {"vlb", "iw"} & set(names) and config.model.num_scales < 2:
        raise ValueError(f"config.eval.bounds={e.bounds!r}: vlb / iw need the chain of model.num_scales >= 2 "
                         f"levels, got {config.model.num_scales}")
    if {"vlb", "iw"} & set(names) and (e.chain_steps == 1 or e.chain_steps > config.model.num_scales):
        raise ValueError(f"config.eval.chain_steps={e.chain_steps} must be 0 (all levels) or between 2 and "
                         f"model.num_scales={config.model.num_scales}")
    if "iw" in names and (not e.iw_k or any(max(e.iw_k) % k for k in e.iw_k)):
        raise ValueError(f"config.eval.iw_k must be a non-empty tuple whose largest K is a multiple of every K "
                         f"(one set of paths serves them all), got {tuple(e.iw_k)!r}")
    return names


# ---------------------------------------------------------------------------------------- process and network
def lowest_num_scales(config) -> int:
    """The fewest levels ``model.num_scales`` may give: 2 (one level has no steps between noise and data:
    PC sampling would jump from the prior to the data in one move), and for the VP processes more than
    ``beta_max``, since the discrete betas are ``beta_max / N`` at most and must stay below 1."""
    if config.training.sde in ("vpsde", "subvpsde"):
        return max(2, math.floor(config.model.beta_max) + 1)
    return 2


def check_num_scales(config) -> None:
    lowest = lowest_num_scales(config)
    if config.model.num_scales < lowest:
        why = (f" for training.sde={config.training.sde!r} with model.beta_max={config.model.beta_max!r} "
               f"(discrete betas beta_max / N must stay below 1)" if lowest > 2 else "")
        raise ValueError(f"config.model.num_scales must be an integer >= {lowest}{why}, the number of noise "
                         f"levels N of the discretised process (default 1000); got {config.model.num_scales}")


def _built_sde(config) -> SDE:
    """The process, built with the config's arguments (its own checks named after ``config.model``)."""
    name = config.training.sde
    try:
        return get_sde(name, **sde_kwargs(leaf_fields(config), name))
    except ValueError as err:
        raise ValueError(f"config.model ({name}): {err}") from err


def _check_times(config, sde: SDE) -> None:
    fields = leaf_fields(config)
    for path in ("training.eps", "sampling.eps", "eval.likelihood_eps"):
        if not fields[path] < sde.T:
            raise ValueError(f"config.{path} must lie in (0, T) = (0, {sde.T}) for training.sde="
                             f"{config.training.sde!r}, got {fields[path]!r}")


def _check_labels(config, sde: SDE) -> None:
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


def check_first_stage_data(config) -> None:
    """A first stage needs image data, encoded once: no per-step dequantisation noise or flips."""
    d = config.data
    if not d.first_stage:
        return
    if d.dataset not in IMAGE_DATASETS:
        raise ValueError(f"config.data.first_stage applies to image data sets {sorted(IMAGE_DATASETS)}, got "
                         f"data.dataset={d.dataset!r}")
    if d.random_flip or d.uniform_dequantization:
        raise ValueError("config.data.random_flip and data.uniform_dequantization must be False with "
                         "data.first_stage (the images are encoded once, at the cell centres)")
    if config.training.eval_quality_samples:
        raise ValueError("config.training.eval_quality_samples must be 0 with data.first_stage (training's KID / FD "
                         "of latent models is not implemented; --mode eval with eval.sample_quality=True scores them)")
    if requested_bounds(config):
        raise ValueError(f"config.eval.bounds={config.eval.bounds!r} applies to pixel-space models; with "
                         f"data.first_stage, --mode eval reports the latent bound (eval.latent_prior, "
                         f"eval.latent_draws): set eval.bounds=''")
    data_shape(config)      # the pairing of first stage and data set, before the network is built


def check_autoencoder(config) -> None:
    """The first stage's downsampling is a power of two (``--mode train_autoencoder``)."""
    f = config.autoencoder.downsampling
    if f & (f - 1):
        raise ValueError(f"config.autoencoder.downsampling must be a power of 2 (1, 2, 4, 8, ...), got {f}")


def _check_network(config) -> None:
    """The network's own argument checks, on the meta device (no memory, no compute)."""
    name, dataset = config.model.name, config.data.dataset
    shape = data_shape(config)
    rank = MODELS.get(name).data_rank
    if len(shape) != rank:
        kind = "vector data (D,)" if rank == 1 else "images (C, H, W)"
        items = f"latents (data.first_stage) of shape {shape}" if config.data.first_stage else f"items of shape {shape}"
        raise ValueError(f"config.model.name={name!r} takes {kind}, but data.dataset={dataset!r} has {items}")
    try:
        with torch.device("meta"):
            get_model(name, **network_kwargs(leaf_fields(config), name), **shape_kwargs(shape))
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.model ({name}): {err}") from err


def parse_cascade(value) -> tuple | None:
    """``config.sampling.cascade``: ``""`` -> None, ``"BASE,SR"`` -> ``("BASE", "SR")`` (two work directories)."""
    parts = [p.strip() for p in str(value).split(",")] if str(value).strip() else []
    if not parts:
        return None
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"config.sampling.cascade must be 'BASE_WORKDIR,SR_WORKDIR' (two work directories), got "
                         f"{value!r}")
    return tuple(parts)


LOW_RES_SOURCES = ("", "heldout")


def check_image_conditioning(config) -> None:
    """An image-conditioned (super-resolution) network, its low-resolution view, the augmentation levels
    and the cascade fit together and fit the data."""
    d, m, t, s = config.data, config.model, config.training, config.sampling
    if d.resolution or d.low_res:
        if d.dataset not in IMAGE_DATASETS.names() or d.first_stage:
            field = "data.resolution" if d.resolution else "data.low_res"
            raise ValueError(f"config.{field} applies to pixel-space image data, got data.dataset={d.dataset!r}"
                             f"{' with data.first_stage' if d.first_stage else ''}")
    native = item_shape(d.dataset, image_size=d.image_size, channels=d.channels) if d.resolution else None
    if d.resolution and (d.resolution > native[-1] or native[-1] % d.resolution):
        raise ValueError(f"config.data.resolution must divide the image size {native[-1]} of data.dataset="
                         f"{d.dataset!r} (0 = native), got {d.resolution}")
    if d.resolution and (t.eval_quality_samples or config.eval.sample_quality):
        raise ValueError("config.training.eval_quality_samples must be 0 and eval.sample_quality False with "
                         "data.resolution (the feature networks take the data's native size)")
    if bool(m.cond_channels) != bool(d.low_res):
        raise ValueError(f"config.model.cond_channels={m.cond_channels} and data.low_res={d.low_res} go together: an "
                         f"image-conditioned network needs the low-resolution size of its condition, and a "
                         f"low-resolution condition needs model.cond_channels (the data's channels)")
    check_choice("config.sampling.low_res_from", s.low_res_from, LOW_RES_SOURCES)
    cascade = parse_cascade(s.cascade)
    if not m.cond_channels:
        for path, value in (("training.cond_noise_max", t.cond_noise_max), ("sampling.cond_noise", s.cond_noise),
                            ("sampling.cascade", s.cascade), ("sampling.low_res_from", s.low_res_from)):
            if value:
                raise ValueError(f"config.{path}={value!r} applies to an image-conditioned model (model.cond_channels "
                                 f"> 0 with data.low_res)")
        return
    if m.name not in ("ddpmpp", "ncsnpp"):
        raise ValueError(f"config.model.cond_channels applies to the U-Nets ddpmpp and ncsnpp, got model.name={m.name!r}")
    shape = data_shape(config)
    if m.cond_channels != shape[0]:
        raise ValueError(f"config.model.cond_channels must be {shape[0]}, the channels of data.dataset="
                         f"{d.dataset!r} (the condition is the item itself at low resolution), got {m.cond_channels}")
    if d.low_res >= shape[-1] or shape[-1] % d.low_res:
        raise ValueError(f"config.data.low_res must be smaller than the model's resolution {shape[-1]} and divide it "
                         f"(an integer pooling factor), got {d.low_res}")
    if s.cond_noise > t.cond_noise_max:
        raise ValueError(f"config.sampling.cond_noise={s.cond_noise} must lie in [0, training.cond_noise_max="
                         f"{t.cond_noise_max}], the augmentation levels the model was trained on")
    if cascade and s.low_res_from:
        raise ValueError("config.sampling.cascade and sampling.low_res_from both name the condition: set one")


def validate_config(config) -> None:
    """Every check, in order; ``ValueError`` names the first bad field, its value and what is allowed."""
    check_field_names(config)
    check_values(config)
    check_combinations(config)
    check_conditioning(config)
    check_image_conditioning(config)
    requested_bounds(config)
    check_num_scales(config)
    check_first_stage_data(config)
    check_distill(config)
    check_autoencoder(config)
    sde = _built_sde(config)
    _check_times(config, sde)
    _check_labels(config, sde)
    _check_network(config)


# ---------------------------------------------------------------------------------------- data shape
def data_shape(config) -> tuple:
    """The shape of one item of ``config.data`` (an image folder's from data.channels and data.image_size)."""
    d = config.data
    shape = item_shape(d.dataset, image_size=d.image_size, channels=d.channels)
    if d.resolution and len(shape) == 3:
        shape = (shape[0], d.resolution, d.resolution)
    if d.first_stage:
        return check_first_stage(d.first_stage, d.dataset, shape, d.centered)
    return shape


def data_classes(config) -> int:
    """How many classes the labels of ``config.data`` have (an image folder's: its sub-folders, when
    data.labels_from_folders is set; reading them needs data.root)."""
    d = config.data
    return dataset_classes(d.dataset, root=d.root or None, labels_from_folders=d.labels_from_folders)
