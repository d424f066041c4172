"""Which options may differ between a checkpoint and the run that reads it.

Every checkpoint stores the options it was trained with (``RunOptions.to_json``). When a run reads a
checkpoint (resume, eval, sample) the stored and the requested options are compared, leaf by leaf
(``sde.kwargs.N``, ``optim.lr``, ...), in three tiers:

- **model** leaves define what the weights mean. They are read off the options themselves, as the
  constructors take them: the process (``SDEOptions``: its name and every argument), the network's
  constructor (``NetworkOptions.name`` and ``kwargs``) and the arguments of its score
  (``NetworkOptions.score_kwargs``: continuous labels, parameterisation, ``scale_by_sigma``,
  ``sigma_data``), the data set and its scaling. They must match in every mode, else a ``ValueError``
  lists each differing leaf with its stored and requested value.
- **free** leaves may change from run to run: iterations, frequencies and retention, logging, GPU
  switches, threads, the device, the data location and held-out size, a pretrained model, and every
  sampling and evaluation setting. Changes are logged.
- everything else is the **training recipe** (loss and its weighting, optimiser, batch size, EMA rate,
  seed, label dropout, data draws and augmentation): it must match to resume training (a resumed run
  would silently follow another recipe); eval and sample only log a change. Three recipe leaves are
  **step-size** leaves, the ones a diverged run is told to change: ``optim.lr``, ``optim.warmup`` and
  ``optim.grad_clip`` are set afresh at every update (nothing in the optimizer's state depends on
  them), so a resume may change them; each change is logged on a line of its own.
"""
from __future__ import annotations

import logging
from dataclasses import fields, is_dataclass
from typing import Mapping

from scoresde.run.options import RunOptions

logger = logging.getLogger(__name__)

# Leaves (exact paths, or prefixes ending in ".") that may change between runs.
FREE = ("device", "data.root", "data.num_test", "network.pretrained", "network.pretrained_config",
        "train.n_iters", "train.log_freq", "train.eval_freq", "train.checkpoint_freq", "train.snapshot_freq",
        "train.keep_last", "train.snapshot_sampling", "train.snapshot_num_samples", "train.progress_bar",
        "train.tensorboard", "train.accel.", "train.threads", "train.max_nonfinite_steps",
        "train.exit_zero_on_signal", "train.eval_quality_samples", "train.eval_quality_metric", "sampler.", "eval.")

# Recipe leaves a resumed run may change: the step size, read afresh at every update (``optimize_step``).
STEP_SIZE = ("optim.lr", "optim.warmup", "optim.grad_clip")


class Absent:
    """A leaf one side does not have (another process's arguments, a field added since)."""

    def __repr__(self) -> str:
        return "absent"


ABSENT = Absent()


def leaves(value, prefix: str = "") -> dict:
    """``{"sde.kwargs.N": 1000, ...}``: every leaf of option objects and mappings by its dotted path
    (tuples are leaves; the resolved config text is not an option)."""
    if is_dataclass(value):
        items = [(f.name, getattr(value, f.name)) for f in fields(value) if f.compare]
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        return {prefix[:-1]: value}
    out = {}
    for key, item in items:
        out.update(leaves(item, f"{prefix}{key}."))
    return out


def model_leaves(options: RunOptions) -> dict:
    """The leaves that define the model: what builds the process, the network and its score, and the
    data they were trained on."""
    network = options.network
    return {**leaves(options.sde, "sde."),
            **leaves({"name": network.name, "kwargs": network.kwargs}, "network."),
            **leaves(network.score_kwargs, "network."),
            "data.dataset": options.data.dataset, "data.centered": options.data.centered,
            "data.resolution": options.data.resolution, "data.low_res": options.data.low_res}


def is_free(path: str) -> bool:
    return any(path == entry or (entry.endswith(".") and path.startswith(entry)) for entry in FREE)


def _differences(stored: dict, requested: dict, paths) -> list[str]:
    """``"path: checkpoint <value>, requested <value>"`` for each differing path."""
    pairs = [(p, stored.get(p, ABSENT), requested.get(p, ABSENT)) for p in paths]
    return [f"{p}: checkpoint {before!r}, requested {after!r}" for p, before, after in pairs if before != after]


def check_options_drift(stored: RunOptions, requested: RunOptions, what: str, resume: bool) -> None:
    """Raise ``ValueError`` when the requested options would misread the checkpoint ``what`` (model
    leaves; on ``resume`` also the recipe but its step size); log every other change."""
    before, after = leaves(stored), leaves(requested)
    model = set(model_leaves(stored)) | set(model_leaves(requested))
    paths = list(dict.fromkeys([*before, *after]))
    step_size = [p for p in paths if resume and p in STEP_SIZE]
    must_match = [p for p in paths if p in model or (resume and not is_free(p) and p not in step_size)]
    bad = _differences(before, after, must_match)
    if bad:
        action = "resume training from" if resume else "use"
        raise ValueError(f"cannot {action} {what}: the config differs from the one it was trained with in "
                         f"{'; '.join(bad)}. Use the training config (or another --workdir)")
    for change in _differences(before, after, step_size):
        logger.info("resuming %s with a changed step size: %s", what, change)
    changed = _differences(before, after, [p for p in paths if p not in must_match and p not in step_size])
    if changed:
        logger.info("option changes against %s (allowed): %s", what, "; ".join(changed))
