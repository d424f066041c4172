"""The one builder of small configs for tests, and the same config as command-line flags.

``tiny_config(name, **overrides)`` loads ``scoresde/configs/<name>.py``, shrinks it with the sizes of its
family (``toy``, ``digits``, ``cifar10``: few points, a tiny network, 50 noise levels, small eval and
sampling batches, no progress bar or tensorboard) and then applies ``overrides``. An override names a
field by its dotted path, ``{"training.n_iters": 20}`` (pass it as ``**{...}``), or with a double
underscore, ``training__n_iters=20``. ``tiny_flags(name, **overrides)`` is the command line that builds
the same config: ``["--config=configs/<name>.py", "--config.<path>=<value>", ...]``.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

import ml_collections

# the sizes every test of a family starts from; a test changes what it needs through overrides
FAMILY_SIZES: Dict[str, Dict[str, Any]] = {
    "toy": {
        "data.num_train": 512,
        "training.batch_size": 64, "training.n_iters": 8, "training.log_freq": 2, "training.eval_freq": 1000,
        "training.checkpoint_freq": 2, "training.keep_last": 2, "training.snapshot_freq": 1000,
        "training.snapshot_sampling": False, "training.progress_bar": False, "training.tensorboard": False,
        "model.hidden": 16, "model.n_blocks": 1, "model.num_scales": 50, "optim.warmup": 2,
        "eval.num_samples": 32, "eval.batch_size": 32, "eval.rtol": 1e-3, "eval.atol": 1e-3,
        "eval.true_nll_samples": 1000,
        "sampling.method": "fast", "sampling.steps": 5, "sampling.num_samples": 16, "sampling.batch_size": 16,
    },
    "digits": {
        "data.num_train": 64,
        "training.batch_size": 16, "training.n_iters": 4, "training.log_freq": 2, "training.eval_freq": 2,
        "training.checkpoint_freq": 2, "training.snapshot_freq": 1000, "training.snapshot_sampling": False,
        "training.snapshot_num_samples": 4, "training.progress_bar": False, "training.tensorboard": False,
        "model.nf": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1, "model.attn_resolutions": (),
        "model.num_scales": 50,
        "eval.num_samples": 8, "eval.batch_size": 8, "eval.rtol": 1e-2, "eval.atol": 1e-2,
        "sampling.num_samples": 4, "sampling.batch_size": 4,
    },
    "cifar10": {
        "device": "cpu",
        "training.batch_size": 8, "training.n_iters": 2, "training.eval_freq": 2, "training.checkpoint_freq": 2,
        "training.snapshot_sampling": False, "training.progress_bar": False, "training.tensorboard": False,
        "model.nf": 8, "model.ch_mult": (1,), "model.num_res_blocks": 1, "model.attn_resolutions": (),
        "model.num_scales": 40,
        "eval.num_samples": 4, "eval.batch_size": 4,
        "sampling.num_samples": 4, "sampling.batch_size": 4,
    },
}


def dotted(overrides: Dict[str, Any]) -> Dict[str, Any]:
    """``training__n_iters`` -> ``training.n_iters``; dotted paths stay as they are."""
    return {path.replace("__", "."): value for path, value in overrides.items()}


def tiny_sizes(name: str, **overrides) -> Dict[str, Any]:
    """The fields ``tiny_config(name, **overrides)`` sets, by dotted path, in the order they are set."""
    family = name.split("/")[0]
    if family not in FAMILY_SIZES:
        raise ValueError(f"name must start with one of {sorted(FAMILY_SIZES)}, got {name!r}")
    return {**FAMILY_SIZES[family], **dotted(overrides)}


def set_field(config: ml_collections.ConfigDict, path: str, value) -> None:
    *sections, field = path.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[field] = value


def apply(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """Set each dotted (or ``__``) path of ``overrides`` on ``config``, in place; returns it."""
    for path, value in dotted(overrides).items():
        set_field(config, path, value)
    return config


def tiny_config(name: str = "toy/gmm_vp", **overrides) -> ml_collections.ConfigDict:
    """``scoresde/configs/<name>.py`` at its family's tiny sizes, then ``overrides``."""
    config = importlib.import_module("scoresde.configs." + name.replace("/", ".")).get_config()
    for path, value in tiny_sizes(name, **overrides).items():
        set_field(config, path, value)
    return config


def flag_value(value) -> str:
    """A value as ``config_flags`` parses it back: tuples without spaces, strings bare."""
    if isinstance(value, tuple):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def tiny_flags(name: str = "toy/gmm_vp", **overrides) -> List[str]:
    """The command-line flags that build ``tiny_config(name, **overrides)``."""
    return [f"--config=configs/{name}.py"] + [
        f"--config.{path}={flag_value(value)}" for path, value in tiny_sizes(name, **overrides).items()]
