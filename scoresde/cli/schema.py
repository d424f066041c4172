"""The config schema: the fields of ``configs/default.py`` (the only fields a config may have), their
defaults and one-line comments, what each field may hold (choices, integer minimums, number ranges,
tuples, strings), and which fields feed which constructor argument of the process and the network.

``configs/default.py`` is where each field is written once, with its default and its comment; the
comments are read from its source with ``tokenize`` (comments) and ``ast`` (which line sets which field).
"""
from __future__ import annotations

import ast
import difflib
import inspect
import io
import tokenize

import ml_collections

from scoresde import samplers
from scoresde.configs import default as default_module
from scoresde.data.datasets import dataset_names
from scoresde.data.folder import CHANNELS, RESIZE_MODES
from scoresde.evaluate.heldout import CHAIN_DECODERS
from scoresde.likelihood.latent import PRIORS as LATENT_PRIORS
from scoresde.models import MODELS, PARAMETERIZATIONS
from scoresde.run.distributed import DEVICES
from scoresde.distill import DISTANCES, ODE_STEPS
from scoresde.run.options import DISTILL_METHODS, SAMPLING_METHODS
from scoresde.sde_lib import SDES
from scoresde.train.losses import LOSSES
from scoresde.train.optim import OPTIMIZERS

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
    "mlp": {**_MLP_ARGS, "learn_variance": "model.learn_variance"},
    "ddpmpp": {**_UNET_ARGS, "num_classes": "model.num_classes", "learn_variance": "model.learn_variance",
               "cond_channels": "model.cond_channels"},
    "ncsnpp": {**_UNET_ARGS, "num_classes": "model.num_classes", "learn_variance": "model.learn_variance",
               "cond_channels": "model.cond_channels"},
    "classifier_mlp": _MLP_ARGS,
    "classifier_unet": {**_CLASSIFIER_UNET_ARGS, "num_classes": "model.num_classes"},
}
CLASSIFIERS = ("classifier_mlp", "classifier_unet")
# Guidance of --mode sample: none, classifier-free (one network trained with label dropout), classifier.
GUIDANCE = ("none", "cfg", "classifier")
# what training.eval_quality_samples samples are scored by at every eval
TRAINING_QUALITY_METRICS = ("kid", "fid")
# Losses defined in continuous time (the others are on the discrete chain).
CONTINUOUS_LOSSES = ("dsm", "flow", "edm", "classifier")
# Losses that train a learned reverse variance (model.learn_variance; Nichol & Dhariwal 2021).
VARIANCE_LOSSES = ("hybrid", "vlb")
# The likelihood's ODE solvers: the adaptive ones (the fixed-step ones would need a step count).
LIKELIHOOD_METHODS = samplers.ode.ADAPTIVE_METHODS + samplers.ode.SCIPY_METHODS

# ---------------------------------------------------------------------------------------- values
# field -> its allowed values (called when checked, so registries filled later count)
CHOICES = {
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
    "sampling.ddpm_variance": lambda: samplers.VLB_VARIANCES,
    "eval.chain_decoder": lambda: CHAIN_DECODERS,
    "data.resize": lambda: RESIZE_MODES,
    "data.channels": lambda: CHANNELS,
    "training.eval_quality_metric": lambda: TRAINING_QUALITY_METRICS,
    "distill.method": lambda: DISTILL_METHODS,
    "distill.solver": lambda: ODE_STEPS,
    "distill.distance": lambda: DISTANCES,
    "eval.latent_prior": lambda: LATENT_PRIORS,
}
# field -> the smallest integer it may hold
INTS = {"seed": 0, "data.num_train": 0, "training.batch_size": 1, "training.n_iters": 0,
        "training.log_freq": 1, "training.eval_freq": 1, "training.checkpoint_freq": 1,
        "training.snapshot_freq": 1, "training.keep_last": 1, "training.max_nonfinite_steps": 1,
        "training.snapshot_num_samples": 0, "training.threads": 0,
        "model.num_scales": 1, "model.hidden": 1, "model.n_blocks": 0, "model.nf": 1, "model.num_res_blocks": 1,
        "model.num_classes": 0, "optim.warmup": 0, "sampling.n_steps": 0, "sampling.steps": 1,
        "sampling.num_samples": 1, "sampling.batch_size": 1, "sampling.resample": 1,
        "eval.batch_size": 1, "eval.num_samples": 1, "eval.true_nll_samples": 2, "eval.quality_samples": 4,
        "eval.fid_samples": 4, "eval.fid_seeds": 1, "eval.fid_reference_items": 0,
        "training.eval_quality_samples": 0,
        "eval.bound_items": 0, "eval.bound_rows": 1, "eval.elbo_samples": 2, "eval.vlb_levels": 0,
        "eval.iw_repeats": 1, "eval.chain_steps": 0, "data.image_size": 1,
        "data.low_res": 0, "data.resolution": 0, "model.cond_channels": 0,
        "distill.grid_size": 2, "distill.ct_s0": 1, "distill.ct_s1": 1, "distill.pd_start_steps": 2,
        "distill.pd_rounds": 1,
        "eval.latent_draws": 2, "autoencoder.latent_channels": 1, "autoencoder.downsampling": 1, "autoencoder.channels": 1}
_OPEN_UNIT = dict(low=0.0, high=1.0, open_low=True, open_high=True)
_POSITIVE = dict(low=0.0, open_low=True)
# field -> the interval of finite numbers it may hold (``utils.check_float``'s arguments)
FLOATS = {"training.eps": _OPEN_UNIT, "training.p_mean": {}, "training.p_std": _POSITIVE, "training.vlb_weight": dict(low=0.0),
          "training.label_dropout": dict(low=0.0, high=1.0, open_high=True),
          "model.ema_rate": dict(low=0.0, high=1.0), "model.sigma_min": _POSITIVE, "model.sigma_max": _POSITIVE,
          "model.beta_min": _POSITIVE, "model.beta_max": _POSITIVE, "model.fourier_scale": _POSITIVE,
          "model.dropout": dict(low=0.0, high=1.0, open_high=True), "model.init_scale": dict(low=0.0),
          "model.sigma_data": _POSITIVE,
          "optim.lr": _POSITIVE, "optim.beta1": dict(low=0.0, high=1.0, open_high=True), "optim.eps": _POSITIVE,
          "optim.weight_decay": dict(low=0.0), "optim.grad_clip": dict(low=0.0),
          "sampling.snr": _POSITIVE, "sampling.eps": _OPEN_UNIT, "sampling.eta": dict(low=0.0),
          "sampling.rtol": _POSITIVE, "sampling.atol": _POSITIVE, "sampling.churn": dict(low=0.0),
          "sampling.s_noise": _POSITIVE, "sampling.guidance_scale": {},
          "sampling.threshold": dict(low=0.0, high=1.0),
          "eval.rtol": _POSITIVE, "eval.atol": _POSITIVE, "eval.likelihood_eps": _OPEN_UNIT,
          "data.heldout_fraction": _OPEN_UNIT,
          "training.cond_noise_max": dict(low=0.0, high=1.0), "sampling.cond_noise": dict(low=0.0, high=1.0),
          "distill.target_decay": dict(low=0.0, high=1.0), "distill.sigma_data": _POSITIVE,
          "distill.eps": _OPEN_UNIT,
          "autoencoder.beta": dict(low=0.0), "autoencoder.decoder_std": _POSITIVE}
# field -> the smallest integer each entry of its tuple may hold
INT_TUPLES = {"model.ch_mult": 1, "model.attn_resolutions": 1, "eval.iw_k": 1}
# fields holding a non-empty tuple of finite numbers
NUMBER_TUPLES = ("model.fir_kernel",)
# fields holding a string (a path, a name or a spec that its mode parses)
STRINGS = ("model.pretrained", "model.pretrained_config", "sampling.classifier_workdir", "eval.inception_weights", "eval.fid_reference",
           "sampling.inpaint_data", "sampling.mask", "sampling.label", "data.root", "data.first_stage",
           "sampling.cascade", "sampling.low_res_from",
           "distill.teacher_workdir")


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


def is_config(value) -> bool:
    """Whether ``value`` is an ml_collections config (the only kind a run takes)."""
    return isinstance(value, ml_collections.ConfigDict)


def schema_fields() -> dict:
    """The fields (and defaults) of ``configs/default.py``: the only fields a config may have."""
    return leaf_fields(default_module.get_default_config())


def unknown_field(path: str, known: dict, note: str = "") -> str:
    """``"config.training.n_iter is not a config field; did you mean n_iters? (fields of config.training:
    [...])"``: the message for a ``path`` that is not in ``known`` (the schema's fields), ``note`` after
    its first clause."""
    section = path.rpartition(".")[0]
    names = [p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == section] if section else []
    if names:
        close = difflib.get_close_matches(path.rpartition(".")[2], names, n=1)
    else:                                   # a misspelt section, or a top-level name: the whole paths
        close = difflib.get_close_matches(path, list(known), n=1)
    message = f"config.{path} is not a config field{note}"
    if close:
        message += f"; did you mean {close[0]}?"
    if names:
        listing = f"fields of config.{section}: {names}"
        message += f" ({listing})" if close else f"; {listing}"
    return message


def sde_kwargs(fields: dict, name: str) -> dict:
    """The constructor arguments of process ``name`` from the flattened config ``fields``."""
    return {arg: fields[field] for arg, field in SDE_ARGS[name].items()}


def network_kwargs(fields: dict, name: str) -> dict:
    """The constructor arguments of network ``name`` (data shape excluded) from the flattened config
    ``fields``; lists become tuples."""
    if name not in NETWORK_ARGS:
        raise ValueError(f"config.model.name={name!r} has no config mapping; available: {sorted(NETWORK_ARGS)} "
                         f"(a new network adds its arguments to NETWORK_ARGS in scoresde/cli/schema.py)")
    kwargs = {arg: fields[field] for arg, field in NETWORK_ARGS[name].items()}
    # left out when off: checkpoints from before they existed still match
    if kwargs.get("learn_variance") is False:
        del kwargs["learn_variance"]
    if kwargs.get("cond_channels") == 0:
        del kwargs["cond_channels"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


# ---------------------------------------------------------------------------------------- comments
def _comments_by_line(source: str) -> dict:
    """``{line number: comment text}`` of every ``#`` comment in ``source``."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}


def _called(node: ast.stmt) -> str | None:
    """The function an assignment ``x.y = f()`` calls (``"f"``), else None."""
    value = getattr(node, "value", None)
    return value.func.id if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) else None


def _field_assignments(function: ast.FunctionDef, sections: dict) -> list:
    """``[(field name, line)]`` of each ``<config>.<field> = value`` in ``function``, in order; an
    assignment of a section (a call of a builder in ``sections``) is left out."""
    return [(node.targets[0].attr, node.end_lineno) for node in function.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Attribute) and isinstance(node.targets[0].value, ast.Name)
            and _called(node) not in sections]


def field_comments() -> dict:
    """``{"training.sde": "the process: vpsde | ...", ...}``: the comment at the end of the line that
    sets each field in ``configs/default.py``, in the order ``get_default_config()`` sets them."""
    source = inspect.getsource(default_module)
    comments, tree = _comments_by_line(source), ast.parse(source)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top = functions["get_default_config"]
    # builder function -> its section: ``config.training = _training()``
    sections = {_called(node): node.targets[0].attr for node in top.body
                if isinstance(node, ast.Assign) and _called(node) in functions}
    ordered = _field_assignments(top, sections)
    for builder, section in sections.items():
        ordered += [(f"{section}.{name}", line) for name, line in _field_assignments(functions[builder], {})]
    return {path: comments[line] for path, line in ordered if line in comments}
