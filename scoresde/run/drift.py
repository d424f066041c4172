"""Which config fields may differ between a checkpoint and the run that reads it.

Every checkpoint carries the resolved config it was trained with. When a run reads a checkpoint
(resume, eval, sample) the two are compared, field by field, in three tiers:

- **model fields** define what the weights mean: the process and its parameters, ``N``, continuous or
  discrete labels, the output parameterisation, the network's architecture, the data set and its
  scaling. They must match in every mode, else a ``ValueError`` lists each differing field with its
  stored and requested value.
- **free fields** may change from run to run: iterations, frequencies and retention, logging, GPU
  switches, the device, the data location, and every sampling and evaluation setting. Changes are
  logged.
- everything else is the **training recipe** (loss and its weighting, optimiser, batch size, EMA
  rate, seed, data draws and augmentation): it must match to resume training (a resumed run would
  silently follow another recipe); eval and sample only log a change.
"""
from __future__ import annotations

import json
import logging

from scoresde.cli.schema import NETWORK_ARGS, SDE_ARGS, schema_fields

logger = logging.getLogger(__name__)

FREE_FIELDS = frozenset({
    "device", "data.root", "training.n_iters", "training.log_freq", "training.eval_freq",
    "training.checkpoint_freq", "training.snapshot_freq", "training.keep_last", "training.snapshot_sampling",
    "training.snapshot_num_samples", "training.progress_bar", "training.tensorboard", "training.bf16",
    "training.compile", "training.channels_last", "training.tf32", "training.max_nonfinite_steps",
    "training.exit_zero_on_signal", "training.threads",
})
FREE_SECTIONS = ("sampling.", "eval.")
_MODEL_ALWAYS = ("training.sde", "training.continuous", "model.name", "model.parameterization",
                 "model.scale_by_sigma", "model.sigma_data", "data.dataset", "data.centered")


def model_fields(fields: dict) -> list[str]:
    """The fields that define the model of a config (flattened ``fields``)."""
    sde, network = fields.get("training.sde"), fields.get("model.name")
    return [*_MODEL_ALWAYS, *SDE_ARGS.get(sde, {}).values(), *NETWORK_ARGS.get(network, {}).values()]


def is_free(path: str) -> bool:
    return path in FREE_FIELDS or path.startswith(FREE_SECTIONS)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"training": {"sde": ...}}`` -> ``{"training.sde": ...}``, lists as tuples (JSON has no tuples)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _differences(stored: dict, requested: dict, paths) -> list[str]:
    """``"path: checkpoint <value>, requested <value>"`` for each differing path (a field an older
    checkpoint did not record counts as its default)."""
    defaults = schema_fields()
    before = {p: stored.get(p, defaults.get(p)) for p in paths}
    return [f"{p}: checkpoint {before[p]!r}, requested {requested.get(p)!r}"
            for p in paths if before[p] != requested.get(p)]


def check_config_drift(stored_json: str, requested_json: str, what: str, resume: bool) -> None:
    """Raise ``ValueError`` when the requested config would misread the checkpoint ``what`` (model
    fields; on ``resume`` also the recipe); log every other change."""
    stored, requested = flatten(json.loads(stored_json)), flatten(json.loads(requested_json))
    model = list(dict.fromkeys(model_fields(stored) + model_fields(requested)))
    recipe = [p for p in schema_fields() if p not in model and not is_free(p) and not p.startswith("model.")]
    recipe += ["model.ema_rate"]
    must_match = model + (recipe if resume else [])
    bad = _differences(stored, requested, must_match)
    if bad:
        action = "resume training from" if resume else "use"
        raise ValueError(f"cannot {action} {what}: the config differs from the one it was trained with in "
                         f"{'; '.join(bad)}. Use the training config (or another --workdir)")
    changed = _differences(stored, requested, [p for p in requested if p not in must_match])
    if changed:
        logger.info("config changes against %s (allowed): %s", what, "; ".join(changed))
