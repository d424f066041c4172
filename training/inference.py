"""What ``eval`` and ``sample`` share: the newest checkpoint's EMA weights in a network built from
the config, and the score function of that network."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ml_collections
import torch
from torch import nn

from models import ExponentialMovingAverage, get_score_fn
from sde_lib import SDE
from training.checkpoint import load_latest, load_module_state
from training.distributed import DistContext
from training.factory import build_model, build_sde, score_kwargs
from training.pipeline import DataSpec, spec_from_meta

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


@contextlib.contextmanager
def ema_weights(ema: ExponentialMovingAverage, model: nn.Module):
    """Run the body with the EMA weights in ``model``; the training weights come back afterwards."""
    ema.store(model)
    ema.copy_to(model)
    try:
        yield model
    finally:
        ema.restore(model)


@dataclass
class Inference:
    sde: SDE
    model: nn.Module                  # holds the EMA weights, in eval mode
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    data: DataSpec                    # tensor-free: shape, levels, scaling
    step: int
    checkpoint: Path


def _check_dataset(config: ml_collections.ConfigDict, meta: dict, path: Path) -> None:
    if meta["dataset"] != config.data.dataset or bool(meta["centered"]) != bool(config.data.centered):
        raise ValueError(f"{path} was trained on data.dataset={meta['dataset']!r} (centered={meta['centered']}), "
                         f"but config.data.dataset={config.data.dataset!r} (centered={config.data.centered})")


def load_for_inference(config: ml_collections.ConfigDict, workdir: str | Path, ctx: DistContext) -> Inference:
    """The newest readable checkpoint of ``workdir``, loaded strictly, with its EMA weights."""
    directory = Path(workdir) / CHECKPOINT_DIR
    found = load_latest(directory)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {directory}; run --mode train first")
    state, path = found
    _check_dataset(config, state["meta"], path)
    data = spec_from_meta(state["meta"])
    model = build_model(config, data.shape).to(ctx.device)
    load_module_state(model, state["model"], path)
    ema = ExponentialMovingAverage(model, decay=config.model.ema_rate)
    ema.load_state_dict(state["ema"])
    ema.copy_to(model)
    model.eval()
    sde = build_sde(config)
    logger.info("loaded EMA weights of step %d from %s", state["step"], path)
    score_fn = get_score_fn(sde, model, train=False, **score_kwargs(config))
    return Inference(sde=sde, model=model, score_fn=score_fn, data=data, step=int(state["step"]), checkpoint=path)
