"""What ``eval`` and ``sample`` share: the newest checkpoint's EMA weights in a network built from the
options, and the score function of that network. The training weights are not loaded."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models import ExponentialMovingAverage, get_score_fn
from sde_lib import SDE
from training.checkpoint import load_latest
from training.config_drift import check_config_drift
from training.distributed import DistContext
from training.options import DataOptions, RunOptions
from training.pipeline import DataSpec, spec_from_meta
from training.runtime import accelerated_score_fn, local_processes, resolve_accel, set_threads
from training.workdir import checkpoint_dir

logger = logging.getLogger(__name__)


@dataclass
class Inference:
    sde: SDE
    model: nn.Module                  # the EMA's network, in eval mode
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: DataSpec                    # tensor-free: shape, levels, scaling
    step: int
    checkpoint: Path


def _check_dataset(options: DataOptions, meta: dict, path: Path) -> None:
    if meta["dataset"] != options.dataset or bool(meta["centered"]) != bool(options.centered):
        raise ValueError(f"{path} was trained on data.dataset={meta['dataset']!r} (centered={meta['centered']}), "
                         f"but config.data.dataset={options.dataset!r} (centered={options.centered})")


def load_for_inference(options: RunOptions, workdir: str | Path, ctx: DistContext) -> Inference:
    """The newest readable checkpoint of ``workdir``; its EMA weights, loaded strictly."""
    directory = checkpoint_dir(workdir)
    found = load_latest(directory)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {directory}; run --mode train first")
    state, path = found
    check_config_drift(state["config"], options.config_json, str(path), resume=False)
    _check_dataset(options.data, state["meta"], path)
    data = spec_from_meta(state["meta"])
    ema = ExponentialMovingAverage(options.network.build(data.shape).to(ctx.device))
    try:
        ema.load_state_dict(state["ema"])
    except ValueError as err:
        raise ValueError(f"{path}: the EMA weights do not match the network built from the config: {err}") from err
    if ctx.device.type == "cpu":
        set_threads(options.train.threads, local_processes())
    sde = options.sde.build()
    logger.info("loaded EMA weights of step %d from %s", state["step"], path)
    accel = resolve_accel(ctx.device, options.train.accel)
    network = torch.compile(ema.module) if accel.compile else ema.module
    score_fn = accelerated_score_fn(get_score_fn(sde, network, train=False, **options.network.score_kwargs),
                                    accel, ctx.device)
    return Inference(sde=sde, model=ema.module, score_fn=score_fn, data=data, step=int(state["step"]),
                     checkpoint=path)
