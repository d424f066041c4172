"""The ``train`` mode, as small named steps: set up (or resume) a run, then repeat
``next_batch`` -> ``train_step`` -> ``after_step`` until ``n_iters``, checkpointing on the way and
when SIGTERM / SIGINT arrive.

``training.batch_size`` is the global batch G: each of the W ranks trains on its rows
``[r·G/W, (r+1)·G/W)`` of every global batch from ``ShardedBatchLoader``, DDP averages the gradients,
and only rank 0 writes files.

World-size independence: the data order is a function of (seed, epoch), and every other random draw
of a step except dropout (dequantisation, flips, the loss's times and noise) is made for the *whole*
global batch from a generator re-seeded with (seed, purpose, step), each rank keeping its own rows. So
sample i of step k sees the same data and noise whether 1 or W processes train, W processes reach the
weights of one process (up to the float rounding of the gradient all-reduce), and a checkpoint resumes
with any world size. Dropout masks come from the global torch RNG, seeded per rank; its state (with
the loader position) is in every checkpoint, so a resume with the same world size is bit-for-bit, one
with another world size re-seeds only dropout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from scoresde.models import ExponentialMovingAverage
from scoresde.sde_lib import SDE
from scoresde.run import checkpoint as ckpt, threads
from scoresde.train.conditioning import (conditioned_labels, draw_condition_noise, draw_drop, heldout_conditions,
                                         loss_targets, low_res_view, network_fn)
from scoresde.run.drift import check_options_drift
from scoresde.data.loader import ShardedBatchLoader
from scoresde.run.distributed import DistContext, all_gather_cat, all_reduce_mean, barrier, wrap_model
from scoresde.run.generation import generate, sample_stats, write_samples
from scoresde.evaluate.heldout import heldout_loss
from scoresde.evaluate.features import check_feature_network
from scoresde.evaluate.quality import QualityReference, heldout_reference, training_quality
from scoresde.train.optim import optimize_step
from scoresde.train.level_sampler import LevelSampler
from scoresde.run.options import Accel, RunOptions, SamplerOptions
from scoresde.data.pipeline import DataSpec, data_meta, load_data, to_data_space, to_model_space
from scoresde.run.runtime import (GracefulStop, MetricsWriter, accelerated_score_fn, apply_accel, autocast,
                              compile_options, local_processes, logs_above_bars, memory_format, progress_bar,
                              resolve_accel, set_threads)
from scoresde.data.streams import Stream, generator, step_seed
from scoresde.run.workdir import (METRICS_FILE, SNAPSHOT_DIR, TENSORBOARD_DIR, WorkdirLock, checkpoint_dir,
                              config_path, write_loss_curve)

logger = logging.getLogger(__name__)

# The loss curve is redrawn at an eval at most this often (reading metrics.jsonl and drawing take
# ~0.3 s: every eval of a GPU run with eval_freq 100 would cost hours), and once when training ends.
LOSS_CURVE_EVERY_S = 60.0


class TrainingDivergedError(RuntimeError):
    """The loss or gradient stayed non-finite, or the weights became non-finite: the run stops before
    anything bad is written."""


@dataclass
class SkipCounter:
    """Skipped updates (non-finite loss or gradient), counted on the device so that the hot path never
    waits for the host; ``read`` synchronises, at logging and checkpoint time only."""

    consecutive: torch.Tensor         # skipped updates in a row, up to now
    first: torch.Tensor               # the step of the first of them
    total: torch.Tensor               # skipped updates in this process's run

    @classmethod
    def on(cls, device: torch.device) -> "SkipCounter":
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return cls(zero, zero.clone(), zero.clone())

    def record(self, skipped: torch.Tensor, step: int) -> None:
        self.consecutive = torch.where(skipped, self.consecutive + 1, 0)
        self.first = torch.where(skipped & (self.consecutive == 1), step, self.first)
        self.total = self.total + skipped.long()

    def read(self) -> tuple[int, int, int]:
        consecutive, first, total = torch.stack([self.consecutive, self.first, self.total]).tolist()
        return consecutive, first, total


class Objective:
    """What a run trains instead of ``options.loss`` (a distilled student, ``train/distill.py``). The loop
    keeps everything else: data order, optimiser, EMA, checkpoints, resume, metrics, signals."""

    describe = "the objective's loss"        # what "loss" is, for the log
    heldout_loss = True                      # eval_freq reports options.loss on held-out items

    def attach(self, run: "TrainRun") -> None:
        """Set up on the fresh run, before a checkpoint (if any) is restored into it."""

    def step(self, run: "TrainRun", x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One optimizer update on the batch (``finish_update`` does the common part); the detached loss."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Tensors and plain containers the checkpoint keeps besides the run's own."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` wrote."""

    def sampler(self, run: "TrainRun") -> "tuple[Callable, SamplerOptions]":
        """The function and sampler that snapshots and training's sample quality draw with."""
        return ema_score_fn(run), run.options.sampler


@dataclass(frozen=True)
class TrainHooks:
    """What one kind of training does that the loop does not: one update on this rank's next batch
    (``step``, returning the detached mean loss), the held-out evaluation at ``eval_freq``, the snapshot at
    ``snapshot_freq`` (after its checkpoint; both given the progress bar) and what its loss means. A
    score model's are ``SCORE_HOOKS``; a first stage's are in ``train/autoencoder.py``."""

    step: Callable[["TrainRun"], torch.Tensor]
    evaluate: Callable[["TrainRun", Any], None]
    snapshot: Callable[["TrainRun", Any], None]
    describe: Callable[[RunOptions], str]          # the loss, in one line
    title: Callable[[RunOptions], str]             # the loss curve's title
    finish: Callable[["TrainRun"], dict] = lambda run: {}   # once training ends or is stopped: what to add


@dataclass
class TrainRun:
    """Everything one training run holds. ``model`` is the plain network, ``train_model`` what the
    forward pass calls (DDP / compiled around it), ``ema.module`` the averaged copy that evaluation
    and snapshots use."""

    options: RunOptions
    ctx: DistContext
    workdir: Path
    data: DataSpec
    sde: SDE
    model: nn.Module
    ema: ExponentialMovingAverage
    optimizer: torch.optim.Optimizer
    loader: ShardedBatchLoader
    generator: torch.Generator
    accel: Accel
    metrics: MetricsWriter
    train_model: nn.Module | None = None
    update: "GradientStep | None" = None      # forward, loss and backward (compiled or captured)
    step: int = 0
    last_saved: int = -1
    lr: float = 0.0
    grad_norm: torch.Tensor | None = None
    skipped: torch.Tensor | None = None       # whether the last update was skipped (on the device)
    skips: SkipCounter | None = None
    curve_drawn: float = -math.inf            # time.monotonic() of the last loss-curve drawing
    quality_reference: QualityReference | None = None   # held-out features for training's KID / FD, once
    level_sampler: LevelSampler | None = None  # vlb with importance sampling: the levels' term history
    level_terms: tuple | None = None          # (levels, unweighted terms) of this rank's last batch
    objective: "Objective | None" = None      # another objective than options.loss (distillation)
    hooks: TrainHooks | None = None           # None: a score model's (SCORE_HOOKS)

    @property
    def checkpoint_dir(self) -> Path:
        return checkpoint_dir(self.workdir)


# ---------------------------------------------------------------------------------------- set-up
def check_global_batch(batch_size: int, ctx: DistContext) -> None:
    """``training.batch_size`` is the global batch: it must split evenly over the ranks."""
    if batch_size % ctx.world_size:
        raise ValueError(f"config.training.batch_size={batch_size} is the global batch and must be divisible by "
                         f"the world size {ctx.world_size} (the number of torchrun processes); use a multiple "
                         f"of {ctx.world_size}")


def check_data_size(batch_size: int, data: DataSpec) -> None:
    if batch_size > len(data.train):
        raise ValueError(f"config.training.batch_size={batch_size} is larger than the training set "
                         f"({len(data.train)} items of {data.name!r})")


def _build_network(options: RunOptions, data: DataSpec, ctx: DistContext, accel: Accel) -> nn.Module:
    torch.manual_seed(options.seed)      # weight initialisation, the same on every rank
    model = options.network.build(data.model_shape).to(ctx.device)
    if accel.channels_last and len(data.model_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(step_seed(options.seed, Stream.DROPOUT, 0, ctx.rank))    # dropout, distinct per rank
    return model


def setup_run(options: RunOptions, workdir: str | Path, ctx: DistContext, data: DataSpec | None = None,
              found: "tuple[dict, Path] | None | bool" = True, objective: Objective | None = None,
              model: nn.Module | None = None, hooks: TrainHooks | None = None) -> TrainRun:
    """Build data (unless given, e.g. synthetic data for a benchmark), SDE, network, EMA, optimizer,
    loader and generator; attach ``objective``; resume from ``found`` (``read_resumable``'s answer;
    ``True``: read it here). ``model`` and ``hooks`` train another network another way (a first stage);
    by default the score network ``options`` describe."""
    workdir, train = Path(workdir), options.train
    check_global_batch(train.batch_size, ctx)
    accel = resolve_accel(ctx.device, train.accel)
    apply_accel(accel, ctx.device)
    data = data if data is not None else load_data(options.data, options.seed)
    check_data_size(train.batch_size, data)
    if found is True:
        found = read_resumable(options, workdir, data)
    data = training_data_on(data, ctx.device)
    model = _build_network(options, data, ctx, accel) if model is None else model.to(ctx.device)
    set_threads(train.threads, local_processes(), ctx.device)
    sde = options.sde.build()
    run = TrainRun(
        options=options, ctx=ctx, workdir=workdir, data=data, sde=sde, model=model,
        ema=ExponentialMovingAverage(model, decay=train.ema_rate), optimizer=options.optim.build(model.parameters()),
        loader=ShardedBatchLoader(len(data.train), train.batch_size, seed=options.seed, rank=ctx.rank,
                                  world_size=ctx.world_size, drop_last=True),
        generator=generator(options.seed, Stream.TRAIN, device=ctx.device), accel=accel,
        skips=SkipCounter.on(ctx.device),
        metrics=MetricsWriter(workdir / METRICS_FILE, enabled=ctx.is_main,
                              tensorboard_dir=workdir / TENSORBOARD_DIR if train.tensorboard else None),
        level_sampler=LevelSampler(sde.N) if options.loss.level_sampling and hooks is None else None,
        objective=objective, hooks=hooks)
    if objective is not None:
        objective.attach(run)
    if ctx.is_main:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temp_files(run.checkpoint_dir)
    barrier(ctx)
    resume(run, found)
    run.train_model = wrap_model(run.model, run.ctx)
    if hooks is None:
        run.update = gradient_step(run)
    return run


def training_data_on(data: DataSpec, device: torch.device) -> DataSpec:
    """The training split (and its labels) moved to a CUDA ``device`` once, so that a batch is gathered
    there and never copied from the host (a pageable host-to-device copy waits for the device)."""
    if device.type != "cuda" or data.train is None:
        return data
    labels = data.train_labels.to(device) if data.train_labels is not None else None
    return dataclasses.replace(data, train=data.train.to(device), train_labels=labels)


# ---------------------------------------------------------------------------------------- checkpoints
def checkpoint_state(run: TrainRun) -> dict:
    """The checkpoint dict (tensors and plain containers only). Collective: every rank must call it."""
    rng = ckpt.gather_rng_states(ckpt.rng_state(run.generator), run.ctx)
    return {"format": ckpt.FORMAT_VERSION, "step": run.step, "model": run.model.state_dict(),
            "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
            "loader": run.loader.state_dict(), "rng": {"world_size": run.ctx.world_size, "ranks": rng},
            "meta": data_meta(run.data), "options": run.options.to_json(), "config": run.options.config_json,
            **({} if run.level_sampler is None else {"level_sampler": run.level_sampler.state_dict()}),
            **({} if run.objective is None else {"objective": run.objective.state_dict()})}


def last_good_checkpoint(run: TrainRun) -> str:
    found = ckpt.list_checkpoints(run.checkpoint_dir)
    return f"{found[-1][1]} (step {found[-1][0]})" if found else "none (no checkpoint was written yet)"


def divergence_advice(run: TrainRun) -> str:
    """How to go on from the last good checkpoint: a smaller step, which a resume may change."""
    o = run.options.optim
    return (f"To resume from it with a smaller step, run the same command again with --config.optim.lr="
            f"{o.lr / 4:g} added (or a longer --config.optim.warmup, or --config.optim.grad_clip="
            f"{o.grad_clip / 2 if o.grad_clip else 1.0:g}); these may change on resume")


def check_skipped_updates(run: TrainRun) -> int:
    """Raise ``TrainingDivergedError`` once ``max_nonfinite_steps`` updates in a row were skipped;
    returns how many were skipped in all. Synchronises with the device."""
    consecutive, first, total = run.skips.read()
    limit = run.options.train.max_nonfinite_steps
    if consecutive >= limit:
        raise TrainingDivergedError(
            f"training diverged: the loss or gradient was not finite at {consecutive} consecutive updates "
            f"(steps {first}-{run.step}, limit training.max_nonfinite_steps={limit}); those updates were "
            f"skipped and nothing was written after them. Last good checkpoint: {last_good_checkpoint(run)}. "
            f"{divergence_advice(run)}")
    return total


def _state_tensors(run: TrainRun) -> list[torch.Tensor]:
    optimizer = [v for state in run.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return [*run.model.parameters(), *run.ema.module.parameters(), *optimizer]


def check_finite_state(run: TrainRun) -> None:
    """Weights, EMA and optimizer state must be finite before they are written (one sync)."""
    tensors = [t for t in _state_tensors(run) if t.is_floating_point()]
    if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        raise TrainingDivergedError(
            f"training diverged: the weights, EMA or optimizer state hold NaN or inf at step {run.step}; "
            f"no checkpoint was written. Last good checkpoint: {last_good_checkpoint(run)}. {divergence_advice(run)}")


def save_checkpoint(run: TrainRun) -> None:
    """Write ``checkpoint_<step>.pt`` atomically (rank 0) and prune old ones; never a checkpoint of
    a diverged run (so pruning never trades a good checkpoint for a bad one)."""
    check_skipped_updates(run)
    check_finite_state(run)
    state = checkpoint_state(run)
    if run.ctx.is_main:
        path = ckpt.checkpoint_path(run.checkpoint_dir, run.step)
        train = run.options.train
        ckpt.write_checkpoint(state, path, snapshot=train.snapshot_freq > 0 and run.step % train.snapshot_freq == 0)
        removed = ckpt.prune_checkpoints(run.checkpoint_dir, train.keep_last, train.snapshot_freq)
        logger.info("saved %s%s", path.name, f" (removed {[p.name for p in removed]})" if removed else "")
    barrier(run.ctx)
    run.last_saved = run.step


def _restore_rng(run: TrainRun, rng: dict, path: Path) -> None:
    ckpt.check_keys(rng, ("world_size", "ranks"), f"{path} rng")
    if rng["world_size"] == run.ctx.world_size:
        ckpt.set_rng_state(rng["ranks"][run.ctx.rank], run.generator)
        return
    logger.info("%s was written by %d ranks, this run has %d: data order and training noise continue "
                "exactly; dropout masks are re-seeded", path, rng["world_size"], run.ctx.world_size)
    torch.manual_seed(step_seed(run.options.seed, Stream.DROPOUT, run.step, run.ctx.rank))


def read_resumable(options: RunOptions, workdir: str | Path, data: DataSpec) -> tuple[dict, Path] | None:
    """The newest readable checkpoint of ``workdir`` and its path (``None`` when there is none), once
    ``options`` and ``data`` are checked against it: a run refused here has changed no file."""
    found = ckpt.load_latest(checkpoint_dir(workdir))
    if found is None:
        return None
    state, path = found
    check_options_drift(RunOptions.from_json(state["options"]), options, str(path), resume=True)
    if state["meta"] != data_meta(data):
        raise ValueError(f"{path} was trained on {state['meta']}, the config gives {data_meta(data)}")
    return found


def restore_state(run: TrainRun, state: dict, path: Path) -> None:
    """Load a checkpoint dict (checked by ``read_resumable``) into the run, strictly: the raw weights go
    into the training network, the averaged ones into the EMA's copy."""
    ckpt.load_module_state(run.model, state["model"], path)
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.loader.load_state_dict(state["loader"])
    if run.level_sampler is not None:
        if "level_sampler" not in state:
            raise ValueError(f"{path} has no level sampler state, which training.loss='vlb' with "
                             f"importance_sampling needs to resume exactly")
        run.level_sampler.load_state_dict(state["level_sampler"])
    if run.objective is not None:
        if "objective" not in state:
            raise ValueError(f"{path} holds no distillation state (a --mode train checkpoint?); distil into "
                             f"another --workdir")
        run.objective.load_state_dict(state["objective"])
    run.step = run.last_saved = int(state["step"])
    _restore_rng(run, state["rng"], path)


def resume(run: TrainRun, found: tuple[dict, Path] | None) -> None:
    """Continue from ``found``, the newest readable checkpoint, if any."""
    if found is None:
        logger.info("no checkpoint in %s: training from scratch", run.checkpoint_dir)
        run.metrics.truncate_after(0)                   # records of a run whose checkpoints are gone
        return
    state, path = found
    restore_state(run, state, path)
    run.metrics.truncate_after(run.step)
    logger.info("resumed from %s at step %d", path, run.step)


# ---------------------------------------------------------------------------------------- steps
def step_generator(run: TrainRun, stream: Stream) -> torch.Generator:
    """``run.generator`` re-seeded for ``stream`` at the current step: the same on every rank."""
    return run.generator.manual_seed(step_seed(run.options.seed, stream, run.step))


def uses_labels(options: RunOptions) -> bool:
    """Whether training reads the data's class labels (a class-conditional model or a classifier)."""
    return options.network.num_classes > 0


def _indices_on(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host indices on ``device``; to CUDA through pinned memory, a copy the host does not wait for."""
    if device.type != "cuda":
        return idx.to(device)
    return idx.pin_memory().to(device, non_blocking=True)


def next_batch(run: TrainRun) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This rank's rows of the next global batch, in model space, and their class labels when the
    model uses them. The global batch is transformed (dequantised, flipped) as a whole, so each row is
    the same for any world size."""
    idx = _indices_on(run.loader.next_global_indices(), run.data.train.device)
    batch = run.data.train[idx].to(run.ctx.device)
    x = to_model_space(batch, run.data, step_generator(run, Stream.DATA), train=True)
    labels = None
    if uses_labels(run.options):
        labels = run.data.train_labels[idx.to(run.data.train_labels.device)].to(run.ctx.device)[run.loader.local_rows]
    if run.options.network.cond_channels:     # super-resolution: conditioned on the batch's low-res view
        labels = low_res_view(run.options, x)[run.loader.local_rows]
    return memory_format(x[run.loader.local_rows], run.accel), labels


def loss_noise(run: TrainRun, x: torch.Tensor) -> dict:
    """This rank's rows of the loss noise (times or levels, ``z``) drawn for the whole global batch,
    then, with label dropout, which labels become the null label (``drop``), from the same stream."""
    loss, size = run.options.loss, run.loader.global_batch_size
    gen = step_generator(run, Stream.NOISE)
    sampler = {} if run.level_sampler is None else {"level_sampler": run.level_sampler}
    noise = loss.noise_fn(run.sde, (size,) + tuple(x.shape[1:]), generator=gen, device=x.device, dtype=x.dtype,
                          **loss.noise_kwargs, **sampler)
    if run.options.train.label_dropout > 0:
        noise["drop"] = draw_drop(size, run.options.train.label_dropout, gen, x.device)
    if run.options.network.cond_channels:     # noise-conditioning augmentation of the low-res condition
        r = run.options.data.low_res
        noise.update(draw_condition_noise(run.options, (size, x.shape[1], r, r), gen, x.device, x.dtype))
    return {k: memory_format(v[run.loader.local_rows], run.accel) for k, v in noise.items()}


def train_step(run: TrainRun, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One optimizer update on this rank's batch (and labels); returns the (detached) mean loss.
    Nothing in it waits for the device: the non-finite guard counts on the device (``SkipCounter``)."""
    noise = loss_noise(run, x)
    labels = conditioned_labels(run.options, run.sde, labels, noise)
    loss = run.update(x, noise, labels)
    record_level_terms(run)
    return finish_update(run, loss)


def finish_update(run: TrainRun, loss: torch.Tensor) -> torch.Tensor:
    """The update once the gradients are in: optimizer step (skipped for a non-finite loss or gradient),
    EMA, step count and the skip counter; returns ``loss``."""
    o = run.options.optim
    run.lr, run.grad_norm, run.skipped = optimize_step(run.optimizer, run.model.parameters(), run.step + 1, o.lr,
                                                       o.warmup, o.grad_clip, loss=loss)
    run.ema.update(run.model)          # a skipped update left the weights as they were
    run.step += 1
    run.skips.record(run.skipped, run.step)
    return loss


def record_level_terms(run: TrainRun) -> None:
    """Add the last batch's terms of every rank, in rank order, to the level sampler's history (the same
    on every rank; finite terms only)."""
    if run.level_sampler is None:
        return
    index, terms = (all_gather_cat(v, run.ctx) for v in run.level_terms)
    finite = torch.isfinite(terms)
    run.level_sampler.update(index[finite], terms[finite])


# ---------------------------------------------------------------------------------------- the gradient step
def loss_function(run: TrainRun, cache: bool = True):
    """``loss(x, noise, labels)``: the forward pass and the mean loss of this rank's batch (float32).
    ``cache=False`` turns autocast's weight cache off (a captured CUDA graph must re-cast every step)."""
    options, device = run.options, run.ctx.device

    def loss(x: torch.Tensor, noise: dict, labels: torch.Tensor | None) -> torch.Tensor:
        fn = network_fn(options, run.sde, run.train_model, labels, train=True)
        with autocast(run.accel, device, cache=cache):
            per_sample = options.loss.fn(run.sde, fn, x, **noise, **options.loss.kwargs,
                                         **loss_targets(options, labels))
        if run.level_sampler is not None:           # the unweighted L_t feed the sampler's history
            run.level_terms = (noise["index"], (per_sample / noise["weight"]).detach())
        return per_sample.float().mean()

    return loss


class GradientStep:
    """Forward, loss and backward, eagerly: zeroes the gradients, fills them, returns the detached loss."""

    def __init__(self, run: TrainRun):
        self.run, self.loss = run, loss_function(run)

    def __call__(self, x: torch.Tensor, noise: dict, labels: torch.Tensor | None) -> torch.Tensor:
        self.run.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, noise, labels)
        loss.backward()
        return loss.detach()


class CompiledGradientStep(GradientStep):
    """The loss function under ``torch.compile`` (forward and loss in one graph, the backward compiled
    by AOTAutograd); on CUDA in ``"reduce-overhead"`` mode, so both are replayed from CUDA graphs. The
    first call compiles: it is timed (one device sync) and logged with the number of graphs."""

    def __init__(self, run: TrainRun):
        super().__init__(run)
        self.options = compile_options(run.ctx.device)
        self.loss = torch.compile(self.loss, **self.options)
        self.compiled = False

    def __call__(self, x, noise, labels):
        if self.options.get("mode") == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()     # the previous step's outputs are consumed
        if self.compiled:
            return super().__call__(x, noise, labels).clone()   # a copy outlives the next graph replay
        start = time.perf_counter()
        graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        loss = super().__call__(x, noise, labels).clone()
        _synchronize(self.run.ctx.device)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
        logger.info("compiled the training step (forward, loss and backward; torch.compile %s, %d graph%s); the "
                    "first step took %.1f s", self.options or "defaults", graphs, "" if graphs == 1 else "s",
                    time.perf_counter() - start)
        self.compiled = True
        return loss


class CapturedGradientStep(GradientStep):
    """The eager step captured in one CUDA graph after ``WARMUP`` eager steps, then replayed: the
    batch and noise are copied into static tensors, one launch runs the forward and backward pass, and
    the gradients land in the same (static) ``.grad`` tensors every step (Nvidia's whole-network
    capture). For small networks, whose kernels take less time than the host needs to launch them."""

    WARMUP = 3

    def __init__(self, run: TrainRun):
        super().__init__(run)
        self.calls, self.graph, self.static, self.static_loss = 0, None, None, None

    def __call__(self, x, noise, labels):
        self.calls += 1
        if self.graph is None and self.calls == self.WARMUP + 1:
            self._try_capture(x, noise, labels)
        if self.graph is None:
            return super().__call__(x, noise, labels)
        for static, value in zip(self.static, _flatten(x, noise, labels)):
            static.copy_(value)
        self.graph.replay()
        return self.static_loss.clone()

    def _try_capture(self, x, noise, labels) -> None:
        """Capture, or log why not and stay eager (e.g. a class-conditional network's label check reads
        values back, which a graph cannot)."""
        try:
            self._capture(x, noise, labels)
        except RuntimeError as err:
            self.graph = None
            logger.warning("the training step could not be captured in a CUDA graph (%s); it runs eagerly",
                           str(err).splitlines()[0])

    def _capture(self, x, noise, labels) -> None:
        start = time.perf_counter()
        self.static = [v.clone() for v in _flatten(x, noise, labels)]
        sx, snoise, slabels = _unflatten(self.static, noise, labels)
        loss = loss_function(self.run, cache=False)
        self.run.optimizer.zero_grad(set_to_none=True)     # backward allocates .grad inside the graph
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = loss(sx, snoise, slabels)
            self.static_loss.backward()
        self.graph = graph
        logger.info("captured the training step (forward, loss and backward) in a CUDA graph in %.2f s",
                    time.perf_counter() - start)


def _flatten(x: torch.Tensor, noise: dict, labels: torch.Tensor | None) -> list[torch.Tensor]:
    return [x, *(noise[k] for k in sorted(noise)), *([] if labels is None else [labels])]


def _unflatten(values: list[torch.Tensor], noise: dict, labels: torch.Tensor | None):
    keys = sorted(noise)
    return values[0], dict(zip(keys, values[1:1 + len(keys)])), (None if labels is None else values[-1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gradient_step(run: TrainRun) -> GradientStep:
    """``training.compile``: the compiled step; else on one CUDA device the captured eager step; else eager.
    Importance-sampled levels run eagerly: their terms are read back after every step."""
    if run.level_sampler is not None:
        return GradientStep(run)
    if run.accel.compile:
        return CompiledGradientStep(run)
    if run.ctx.device.type == "cuda" and not run.ctx.distributed:
        return CapturedGradientStep(run)
    return GradientStep(run)


@dataclass
class LossMeter:
    """Sums the losses of applied updates on the device (no sync per step) and reports their mean and
    steps/s at log time (the mean is ``None`` if every update since the last report was skipped)."""

    total: torch.Tensor | None = None
    applied: torch.Tensor | None = None
    count: int = 0
    since: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, skipped: torch.Tensor) -> None:
        loss, applied = torch.where(skipped, 0.0, loss), (~skipped).float()
        self.total = loss if self.total is None else self.total + loss
        self.applied = applied if self.applied is None else self.applied + applied
        self.count += 1

    def flush(self, ctx: DistContext) -> tuple[float | None, float]:
        total, applied = all_reduce_mean(torch.stack([self.total, self.applied]), ctx).tolist()
        rate = self.count / max(time.perf_counter() - self.since, 1e-9)
        self.total, self.applied, self.count, self.since = None, None, 0, time.perf_counter()
        return (total / applied if applied > 0 else None), rate


def log_metrics(run: TrainRun, meter: LossMeter, bar) -> None:
    loss, rate = meter.flush(run.ctx)
    skipped = check_skipped_updates(run)
    grad_norm = float(run.grad_norm)
    record = {"step": run.step, "loss": loss, "lr": run.lr,
              "grad_norm": grad_norm if grad_norm == grad_norm and abs(grad_norm) != float("inf") else None,
              "skipped_updates": skipped, "steps_per_s": round(rate, 3), "time": round(time.time(), 3)}
    run.metrics.write(record)
    shown = "skipped" if loss is None else f"{loss:.4g}"
    bar.set_postfix(loss=shown, steps_s=f"{rate:.1f}")
    if bar.disable:
        logger.info("step %d: loss %s, %.1f steps/s", run.step, shown, rate)


def _rng_devices(run: TrainRun) -> list:
    return [run.ctx.device] if run.ctx.device.type == "cuda" else []


def ema_score_fn(run: TrainRun, labels: torch.Tensor | None = None):
    """The function the loss takes, of the EMA weights (what evaluation and sampling use): the score
    (given ``labels`` for a class-conditional model) or a classifier's logits, under bf16 autocast
    when ``training.bf16``."""
    fn = network_fn(run.options, run.sde, run.ema.module, labels, train=False)
    return accelerated_score_fn(fn, run.accel, run.ctx.device)


def log_eval_loss(run: TrainRun, bar=None) -> None:
    """Held-out loss of the EMA weights on one eval batch (fixed noise, global RNG untouched), shown
    and logged; then the loss curve ``loss_curve.png`` is redrawn."""
    if run.objective is not None and not run.objective.heldout_loss:
        quality = eval_quality(run) if run.options.train.eval_quality_samples else {}
        if quality:
            run.metrics.write({"step": run.step, **quality})
        return
    n = run.options.eval.batch_size
    items = run.data.test[:n]
    labels = run.data.test_labels[:n] if uses_labels(run.options) else None
    if run.options.network.cond_channels:
        labels = heldout_conditions(run.options, run.sde, run.data, len(items))[1]
    with torch.random.fork_rng(devices=_rng_devices(run)):
        loss = heldout_loss(run.sde, ema_score_fn(run), run.options.loss, items, run.data, batch_size=len(items),
                            generator=generator(run.options.seed, Stream.EVAL_LOSS, run.ctx.rank, run.ctx.device),
                            ctx=run.ctx, labels=labels, fn_for=lambda y: ema_score_fn(run, y),
                            targets=lambda y: loss_targets(run.options, y))
    quality = eval_quality(run) if run.options.train.eval_quality_samples else {}
    run.metrics.write({"step": run.step, "eval_loss": loss, **quality})
    logger.info("step %d: held-out loss %.5g (EMA weights, %d items)%s", run.step, loss, len(items),
                "".join(f", {k} {v:.4g}" for k, v in quality.items() if "@" in k))
    if bar is not None and not bar.disable:
        bar.set_postfix_str(f"{getattr(bar, 'postfix', None) or ''} held_out={loss:.4g}".strip())
    redraw_loss_curve(run)


def hooks_of(run: TrainRun) -> TrainHooks:
    return run.hooks or SCORE_HOOKS


def draw_loss_curve(run: TrainRun) -> None:
    """``loss_curve.png`` now (rank 0), labelled by the kind of training."""
    if run.ctx.is_main:
        hooks = hooks_of(run)
        write_loss_curve(run.workdir, run.options, title=hooks.title(run.options), caption=hooks.describe(run.options))
        run.curve_drawn = time.monotonic()


def drawing(run: TrainRun) -> tuple[Callable, SamplerOptions]:
    """What snapshots and training's sample quality draw with: the EMA score and the config's sampler,
    or the objective's."""
    return run.objective.sampler(run) if run.objective is not None else (ema_score_fn(run), run.options.sampler)


def redraw_loss_curve(run: TrainRun) -> None:
    """``draw_loss_curve`` at most every ``LOSS_CURVE_EVERY_S`` (the end of training draws it anyway)."""
    if time.monotonic() - run.curve_drawn >= LOSS_CURVE_EVERY_S:
        draw_loss_curve(run)


def class_cycle(run: TrainRun, num: int) -> torch.Tensor | None:
    """For a class-conditional model, the classes in turn for ``num`` samples; for an image-conditioned
    one the held-out items' low-resolution conditions in turn; else (and for an objective's student,
    which draws with its own function) ``None``."""
    if run.objective is not None:
        return None
    if run.options.network.cond_channels:
        return heldout_conditions(run.options, run.sde, run.data, num)[1]
    return torch.arange(num) % run.options.network.num_classes if uses_labels(run.options) else None


def eval_quality(run: TrainRun) -> dict:
    """``training.eval_quality_samples`` samples of the EMA weights (the same noise at every eval), scored
    by KID or FD against the held-out items (``evaluate/quality.py``; their features computed once)."""
    options = run.options
    if run.quality_reference is None:
        run.quality_reference = heldout_reference(run.data, options.eval.inception_weights, run.ctx.device)
    num = options.train.eval_quality_samples
    fn, sampler = drawing(run)
    with torch.random.fork_rng(devices=_rng_devices(run)):
        x, _ = generate(run.sde, fn, num, run.data.model_shape, sampler,
                        generator=generator(options.seed, Stream.TRAIN_QUALITY, run.ctx.rank, run.ctx.device),
                        ctx=run.ctx, labels=class_cycle(run, num), score_for=lambda y: ema_score_fn(run, y))
    return training_quality(x, run.data, options.train.eval_quality_metric, run.quality_reference)


def write_snapshot_samples(run: TrainRun) -> None:
    """A few samples of the EMA weights into ``snapshots/samples_<step>.npz/.png``."""
    options = run.options
    num = options.train.snapshot_num_samples
    labels = class_cycle(run, num)       # a class-conditional model: the classes in turn
    fn, sampler = drawing(run)
    with torch.random.fork_rng(devices=_rng_devices(run)):
        x, nfe = generate(run.sde, fn, num, run.data.model_shape, sampler,
                          generator=generator(options.seed, Stream.SNAPSHOT, run.ctx.rank, run.ctx.device),
                          ctx=run.ctx, labels=labels, score_for=lambda y: ema_score_fn(run, y))
    samples = to_data_space(x.cpu(), run.data)
    if run.ctx.is_main:
        caption = f"step {run.step}, EMA weights, {sampler.method} sampler, {nfe} NFE"
        write_samples(samples, run.data, run.workdir / SNAPSHOT_DIR, f"samples_{run.step:08d}", caption)
        run.metrics.write({"step": run.step, **{f"snapshot_{k}": v for k, v in sample_stats(samples, run.data).items()}})


def snapshot_samples(run: TrainRun, bar) -> None:
    """A score model's snapshot: ``write_snapshot_samples``, announced on the bar (a classifier has none)."""
    if run.options.loss.is_classifier:
        return
    what = f"drawing {run.options.train.snapshot_num_samples} snapshot samples ({run.options.sampler.method})"
    bar.set_description_str(what)
    if bar.disable:
        logger.info("step %d: %s", run.step, what)
    write_snapshot_samples(run)
    bar.set_description_str("")


def score_step(run: TrainRun) -> torch.Tensor:
    batch = next_batch(run)
    return train_step(run, *batch) if run.objective is None else run.objective.step(run, *batch)


def score_title(options: RunOptions) -> str:
    return f"{options.data.dataset}, {options.sde.name}, {options.network.name}"


SCORE_HOOKS = TrainHooks(step=score_step, evaluate=log_eval_loss, snapshot=snapshot_samples,
                         describe=lambda options: options.loss.describe, title=score_title)


def after_step(run: TrainRun, loss: torch.Tensor, meter: LossMeter, bar) -> None:
    """Logging, held-out evaluation, checkpoints and snapshots, each at its own frequency."""
    o, step, hooks = run.options.train, run.step, hooks_of(run)
    meter.add(loss, run.skipped)
    bar.update(1)
    if step % o.log_freq == 0:
        log_metrics(run, meter, bar)
    if step % o.eval_freq == 0:
        hooks.evaluate(run, bar)
    if step % o.checkpoint_freq == 0 or step % o.snapshot_freq == 0:
        save_checkpoint(run)
    if step % o.snapshot_freq == 0 and o.snapshot_sampling and o.snapshot_num_samples > 0:
        hooks.snapshot(run, bar)


def stop_requested(stop: GracefulStop, ctx: DistContext) -> bool:
    """Whether any rank received SIGTERM / SIGINT (all ranks agree, so all checkpoint together)."""
    if not ctx.distributed:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=ctx.device)
    return bool(all_reduce_mean(flag, ctx) > 0)


def run_loop(run: TrainRun, stop: GracefulStop) -> bool:
    """Train until ``n_iters`` or a stop signal; returns whether a signal stopped it."""
    meter = LossMeter()
    train = run.options.train
    with logs_above_bars(), progress_bar(train.n_iters, run.step, train.progress_bar) as bar:
        while run.step < train.n_iters:
            loss = hooks_of(run).step(run)
            after_step(run, loss, meter, bar)
            threads.tick(run.step)
            if stop_requested(stop, run.ctx):
                return True
    return False


# ---------------------------------------------------------------------------------------- driver
def _agree(ok: bool, ctx: DistContext) -> bool:
    """Whether ``ok`` holds on every rank (a world of one needs no collective)."""
    if not ctx.distributed:
        return ok
    return bool(all_reduce_mean(torch.tensor([float(ok)], device=ctx.device), ctx) == 1.0)


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, ctx: DistContext):
    """Rank 0 holds ``WorkdirLock`` for the run; every rank fails together if it is busy."""
    lock, error = contextlib.ExitStack(), None
    with lock:
        if ctx.is_main:
            try:
                lock.enter_context(WorkdirLock(workdir))
            except Exception as err:       # noqa: BLE001 -- re-raised below, on every rank together
                error = err
        if not _agree(error is None, ctx):
            raise error or RuntimeError(f"rank 0 could not lock {workdir}; see its error")
        yield


def train(options: RunOptions, workdir: str | Path, ctx: DistContext | None = None,
          objective: Objective | None = None, *, hooks: TrainHooks | None = None,
          model_for: Callable[[RunOptions, DataSpec], nn.Module] | None = None) -> dict:
    """The ``train`` mode; returns ``{"step", "stopped_by_signal", "signal"}``. ``objective``: another
    than ``options.loss`` (``--mode distill``'s). ``hooks`` and ``model_for(options, data)`` (the network,
    before it is moved to the device) train another kind of network (``train/autoencoder.py``); by default
    the score network.

    No file of the work directory changes before the lock is held and the options are checked against
    its newest checkpoint; the data are loaded before that, so a run without its data creates nothing,
    and a run that fails before training in a work directory it created removes it again."""
    ctx = ctx or DistContext()
    check_global_batch(options.train.batch_size, ctx)
    data = load_data(options.data, options.seed)
    check_data_size(options.train.batch_size, data)
    if options.train.eval_quality_samples and hooks is None:
        check_feature_network(data, options.eval.inception_weights)    # before the first eval, not at it
    model = model_for(options, data) if model_for is not None else None
    created = first_missing(Path(workdir))
    with workdir_lock(workdir, ctx):
        with removed_on_failure(created, ctx):
            found = read_resumable(options, workdir, data)
            write_train_config(options, workdir, ctx)
            run = setup_run(options, workdir, ctx, data=data, found=found, objective=objective, model=model,
                            hooks=hooks)
        return train_locked(run)


def first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what creating it creates)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextlib.contextmanager
def removed_on_failure(created: Path | None, ctx: DistContext):
    """On an error, remove ``created`` (a directory this run made, lock and resolved config included)."""
    try:
        yield
    except BaseException:
        if created is not None and ctx.is_main and created.is_dir():
            shutil.rmtree(created)
            logger.info("removed %s, created by this run before it failed", created)
        raise


def write_train_config(options: RunOptions, workdir: str | Path, ctx: DistContext) -> Path:
    """Write the resolved config of a training run into the work directory (rank 0), once the run holds
    its lock and may resume from the newest checkpoint. Eval and sample write theirs next to their
    results, after them."""
    path = config_path(workdir, "train")
    if ctx.is_main:
        ckpt.atomic_write_text(path, options.config_json + "\n")
    return path


def train_locked(run: TrainRun) -> dict:
    """Train ``run`` (set up, its work directory locked) to ``n_iters`` or a stop signal; the last
    checkpoint, the loss curve and the ``"finished"`` / ``"stopped"`` record are written on the way out."""
    options = run.options
    if run.step >= options.train.n_iters and run.last_saved == run.step:
        run.metrics.close()
        logger.info("training is already finished: the newest checkpoint is at step %d and training.n_iters=%d; "
                    "to train longer, run again with a larger --config.training.n_iters (e.g. %d)", run.step,
                    options.train.n_iters, 2 * max(run.step, 1))
        return {"step": run.step, "stopped_by_signal": False, "signal": None, "already_finished": True,
                **hooks_of(run).finish(run)}
    logger.info("loss: %s", hooks_of(run).describe(options) if run.objective is None else run.objective.describe)
    try:
        with GracefulStop(run.checkpoint_dir) as stop:
            stopped = run_loop(run, stop)
            if run.last_saved != run.step:
                save_checkpoint(run)
        run.metrics.write({"step": run.step, "event": "stopped" if stopped else "finished"})
        draw_loss_curve(run)
    finally:
        run.metrics.close()
        threads.follow(None)          # the caller's own modules run without the run's per-layer tick
    if stopped:
        logger.warning("%s received: checkpoint written at step %d; exiting", stop.signal_name or "signal", run.step)
    else:
        logger.info("training finished at step %d", run.step)
    return {"step": run.step, "stopped_by_signal": stopped, "signal": stop.signum if stopped else None,
            **hooks_of(run).finish(run)}
