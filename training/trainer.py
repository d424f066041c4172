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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import ml_collections
import torch
from torch import nn

from models import ExponentialMovingAverage, get_score_fn
from sde_lib import SDE
from training import checkpoint as ckpt
from training.data_loader import SEED_STRIDE, ShardedBatchLoader
from training.distributed import (DistContext, all_reduce_mean, barrier, unwrap_model, wrap_model)
from training.evaluate import LOSS_STREAM, eval_generator, heldout_loss
from training.factory import (build_model, build_sde, data_from_config, loss_setup, noise_setup, sampler_kwargs,
                              score_kwargs)
from training.inference import CHECKPOINT_DIR, ema_weights
from training.optim import build_optimizer, optimize_step
from training.pipeline import DataSpec, data_meta, stream_seed, to_data_space, to_model_space
from training.runtime import (Accel, GracefulStop, MetricsWriter, apply_tf32, autocast, memory_format,
                              progress_bar, resolve_accel)
from training.sampling import generate, sample_stats, sampling_generator, write_samples

logger = logging.getLogger(__name__)

TRAIN_STREAM = 1            # the generator's initial seed
DATA_STREAM = 2             # dequantisation and flips of a step's global batch
NOISE_STREAM = 3            # the loss's times / levels and noise for a step's global batch
DROPOUT_STREAM = 4          # the global torch RNG (dropout), per rank
SNAPSHOT_STREAM = 22


@dataclass(frozen=True)
class TrainOptions:
    """The plain numbers and switches the loop needs, read once from the config."""

    n_iters: int
    log_freq: int
    eval_freq: int
    checkpoint_freq: int
    snapshot_freq: int
    keep_last: int
    snapshot_sampling: bool
    snapshot_num_samples: int
    progress_bar: bool
    tensorboard: bool
    lr: float
    warmup: int
    grad_clip: float
    eval_batch_size: int
    seed: int
    sampling_method: str
    sampling_kwargs: dict
    sampling_batch_size: int


def train_options(config: ml_collections.ConfigDict) -> TrainOptions:
    t, o = config.training, config.optim
    return TrainOptions(
        n_iters=t.n_iters, log_freq=t.log_freq, eval_freq=t.eval_freq, checkpoint_freq=t.checkpoint_freq,
        snapshot_freq=t.snapshot_freq, keep_last=t.keep_last, snapshot_sampling=t.snapshot_sampling,
        snapshot_num_samples=t.snapshot_num_samples, progress_bar=t.progress_bar, tensorboard=t.tensorboard,
        lr=o.lr, warmup=o.warmup, grad_clip=o.grad_clip, eval_batch_size=config.eval.batch_size,
        seed=config.seed, sampling_method=config.sampling.method,
        sampling_kwargs=sampler_kwargs(config.sampling), sampling_batch_size=config.sampling.batch_size)


@dataclass
class TrainRun:
    """Everything one training run holds; ``model`` is the plain network, ``train_model`` what the
    forward pass calls (DDP / compiled around it)."""

    options: TrainOptions
    ctx: DistContext
    workdir: Path
    data: DataSpec
    sde: SDE
    model: nn.Module
    ema: ExponentialMovingAverage
    optimizer: torch.optim.Optimizer
    loader: ShardedBatchLoader
    generator: torch.Generator
    loss_fn: Callable
    loss_kwargs: dict
    noise_fn: Callable
    noise_kwargs: dict
    score_kwargs: dict
    accel: Accel
    config_json: str
    metrics: MetricsWriter
    train_model: nn.Module | None = None
    step: int = 0
    last_saved: int = -1
    lr: float = 0.0
    grad_norm: torch.Tensor | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.workdir / CHECKPOINT_DIR


# ---------------------------------------------------------------------------------------- set-up
def step_seed(seed: int, stream: int, step: int, rank: int = 0) -> int:
    """The seed of one purpose (``stream``) at optimizer step ``step`` (and ``rank``, for dropout)."""
    return (stream_seed(seed, stream, rank) * SEED_STRIDE + step) % 2 ** 63


def training_generator(seed: int, ctx: DistContext) -> torch.Generator:
    """The trainer's generator on this rank's device; ``step_generator`` re-seeds it at every draw."""
    return torch.Generator(device=ctx.device).manual_seed(stream_seed(seed, TRAIN_STREAM))


def check_global_batch(batch_size: int, ctx: DistContext) -> None:
    """``training.batch_size`` is the global batch: it must split evenly over the ranks."""
    if batch_size % ctx.world_size:
        raise ValueError(f"config.training.batch_size={batch_size} is the global batch and must be divisible by "
                         f"the world size {ctx.world_size} (the number of torchrun processes); use a multiple "
                         f"of {ctx.world_size}")


def _build_network(config, data: DataSpec, ctx: DistContext, accel: Accel) -> nn.Module:
    torch.manual_seed(config.seed)      # weight initialisation, the same on every rank
    model = build_model(config, data.shape).to(ctx.device)
    if accel.channels_last and len(data.shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(step_seed(config.seed, DROPOUT_STREAM, 0, ctx.rank))    # dropout, distinct per rank
    return model


def _build_loader(config, data: DataSpec, ctx: DistContext) -> ShardedBatchLoader:
    return ShardedBatchLoader(data.train, config.training.batch_size, seed=config.seed, rank=ctx.rank,
                              world_size=ctx.world_size, drop_last=True, device=ctx.device)


def _metrics_writer(workdir: Path, ctx: DistContext, tensorboard: bool) -> MetricsWriter:
    return MetricsWriter(workdir / "metrics.jsonl", enabled=ctx.is_main,
                         tensorboard_dir=workdir / "tensorboard" if tensorboard else None)


def setup_run(config: ml_collections.ConfigDict, workdir: str | Path, ctx: DistContext,
              data: DataSpec | None = None) -> TrainRun:
    """Build data (unless given, e.g. synthetic data for a benchmark), SDE, network, EMA, optimizer,
    loader and generator; resume if a checkpoint exists."""
    workdir = Path(workdir)
    t = config.training
    check_global_batch(t.batch_size, ctx)
    accel = resolve_accel(ctx.device, bf16=t.bf16, compile=t.compile, channels_last=t.channels_last, tf32=t.tf32)
    apply_tf32(accel)
    data = data if data is not None else data_from_config(config)
    model = _build_network(config, data, ctx, accel)
    o = config.optim
    loss_fn, loss_kwargs = loss_setup(config)
    noise_fn, noise_kwargs = noise_setup(config)
    run = TrainRun(
        options=train_options(config), ctx=ctx, workdir=workdir, data=data, sde=build_sde(config), model=model,
        ema=ExponentialMovingAverage(model, decay=config.model.ema_rate),
        optimizer=build_optimizer(model.parameters(), o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps,
                                  weight_decay=o.weight_decay),
        loader=_build_loader(config, data, ctx), generator=training_generator(config.seed, ctx),
        loss_fn=loss_fn, loss_kwargs=loss_kwargs, noise_fn=noise_fn, noise_kwargs=noise_kwargs,
        score_kwargs=score_kwargs(config), accel=accel,
        config_json=config.to_json(), metrics=_metrics_writer(workdir, ctx, t.tensorboard))
    if ctx.is_main:
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_temp_files(run.checkpoint_dir)
    barrier(ctx)
    resume(run)
    run.train_model = _training_module(run)
    return run


def _training_module(run: TrainRun) -> nn.Module:
    module = wrap_model(run.model, run.ctx)
    if run.accel.compile:
        module = torch.compile(module)
    return module


# ---------------------------------------------------------------------------------------- checkpoints
def checkpoint_state(run: TrainRun) -> dict:
    """The checkpoint dict (tensors and plain containers only). Collective: every rank must call it."""
    rng = ckpt.gather_rng_states(ckpt.rng_state(run.generator), run.ctx)
    return {"format": ckpt.FORMAT_VERSION, "step": run.step, "model": unwrap_model(run.model).state_dict(),
            "ema": run.ema.state_dict(), "optimizer": run.optimizer.state_dict(),
            "loader": run.loader.state_dict(), "rng": {"world_size": run.ctx.world_size, "ranks": rng},
            "meta": data_meta(run.data), "config": run.config_json}


def save_checkpoint(run: TrainRun) -> None:
    """Write ``checkpoint_<step>.pt`` atomically (rank 0) and prune old ones."""
    state = checkpoint_state(run)
    if run.ctx.is_main:
        path = ckpt.checkpoint_path(run.checkpoint_dir, run.step)
        ckpt.atomic_save(state, path)
        removed = ckpt.prune_checkpoints(run.checkpoint_dir, run.options.keep_last, run.options.snapshot_freq)
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
    torch.manual_seed(step_seed(run.options.seed, DROPOUT_STREAM, run.step, run.ctx.rank))


def restore_state(run: TrainRun, state: dict, path: Path) -> None:
    """Load a checkpoint dict into the run, strictly."""
    if state["meta"] != data_meta(run.data):
        raise ValueError(f"{path} was trained on {state['meta']}, the config gives {data_meta(run.data)}")
    ckpt.load_module_state(run.model, state["model"], path)
    run.ema.load_state_dict(state["ema"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.loader.load_state_dict(state["loader"])
    _restore_rng(run, state["rng"], path)
    run.step = run.last_saved = int(state["step"])


def resume(run: TrainRun) -> None:
    """Continue from the newest readable checkpoint, if any."""
    found = ckpt.load_latest(run.checkpoint_dir)
    if found is None:
        logger.info("no checkpoint in %s: training from scratch", run.checkpoint_dir)
        return
    state, path = found
    restore_state(run, state, path)
    run.metrics.truncate_after(run.step)
    logger.info("resumed from %s at step %d", path, run.step)


# ---------------------------------------------------------------------------------------- steps
def step_generator(run: TrainRun, stream: int) -> torch.Generator:
    """``run.generator`` re-seeded for ``stream`` at the current step: the same on every rank."""
    return run.generator.manual_seed(step_seed(run.options.seed, stream, run.step))


def next_batch(run: TrainRun) -> torch.Tensor:
    """This rank's rows of the next global batch, in model space. The global batch is transformed
    (dequantised, flipped) as a whole, so each row is the same for any world size."""
    idx = run.loader.next_global_indices()
    batch = run.data.train[idx.to(run.data.train.device)].to(run.ctx.device)
    x = to_model_space(batch, run.data, step_generator(run, DATA_STREAM), train=True)
    return memory_format(x[run.loader.local_rows], run.accel)


def loss_noise(run: TrainRun, x: torch.Tensor) -> dict:
    """This rank's rows of the loss noise (times or levels, ``z``) drawn for the whole global batch."""
    shape = (run.loader.global_batch_size,) + tuple(x.shape[1:])
    noise = run.noise_fn(run.sde, shape, generator=step_generator(run, NOISE_STREAM), device=x.device,
                         dtype=x.dtype, **run.noise_kwargs)
    return {k: memory_format(v[run.loader.local_rows], run.accel) for k, v in noise.items()}


def train_step(run: TrainRun, x: torch.Tensor) -> torch.Tensor:
    """One optimizer update on this rank's batch; returns the (detached) mean loss."""
    run.optimizer.zero_grad(set_to_none=True)
    score_fn = get_score_fn(run.sde, run.train_model, train=True, **run.score_kwargs)
    noise = loss_noise(run, x)
    with autocast(run.accel):
        per_sample = run.loss_fn(run.sde, score_fn, x, **noise, **run.loss_kwargs)
    loss = per_sample.float().mean()
    loss.backward()
    o = run.options
    run.lr, run.grad_norm = optimize_step(run.optimizer, run.model.parameters(), run.step + 1, o.lr, o.warmup,
                                          o.grad_clip)
    run.ema.update(unwrap_model(run.model))
    run.step += 1
    return loss.detach()


@dataclass
class LossMeter:
    """Sums losses on the device (no sync per step) and reports the mean and steps/s at log time."""

    total: torch.Tensor | None = None
    count: int = 0
    since: float = field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor) -> None:
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def flush(self, ctx: DistContext) -> tuple[float, float]:
        mean = float(all_reduce_mean(self.total / self.count, ctx))
        rate = self.count / max(time.perf_counter() - self.since, 1e-9)
        self.total, self.count, self.since = None, 0, time.perf_counter()
        return mean, rate


def log_metrics(run: TrainRun, meter: LossMeter, bar) -> None:
    loss, rate = meter.flush(run.ctx)
    record = {"step": run.step, "loss": loss, "lr": run.lr, "grad_norm": float(run.grad_norm),
              "steps_per_s": round(rate, 3), "time": round(time.time(), 3)}
    run.metrics.write(record)
    bar.set_postfix(loss=f"{loss:.4g}", steps_s=f"{rate:.1f}")
    if bar.disable:
        logger.info("step %d: loss %.5g, %.1f steps/s", run.step, loss, rate)


def _rng_devices(run: TrainRun) -> list:
    return [run.ctx.device] if run.ctx.device.type == "cuda" else []


def log_eval_loss(run: TrainRun) -> None:
    """Held-out loss of the EMA weights on one eval batch (fixed noise, global RNG untouched)."""
    items = run.data.test[: run.options.eval_batch_size]
    with torch.random.fork_rng(devices=_rng_devices(run)), ema_weights(run.ema, unwrap_model(run.model)):
        score_fn = get_score_fn(run.sde, unwrap_model(run.model), train=False, **run.score_kwargs)
        loss = heldout_loss(run.sde, score_fn, run.loss_fn, run.loss_kwargs, items, run.data,
                            batch_size=len(items), generator=eval_generator(run.options.seed, LOSS_STREAM, run.ctx),
                            ctx=run.ctx)
    run.metrics.write({"step": run.step, "eval_loss": loss})


def write_snapshot_samples(run: TrainRun) -> None:
    """A few samples of the EMA weights into ``snapshots/samples_<step>.npz/.png``."""
    o = run.options
    model = unwrap_model(run.model)
    with torch.random.fork_rng(devices=_rng_devices(run)), ema_weights(run.ema, model):
        score_fn = get_score_fn(run.sde, model, train=False, **run.score_kwargs)
        x, _ = generate(run.sde, score_fn, o.snapshot_num_samples, run.data.shape, method=o.sampling_method,
                        kwargs=o.sampling_kwargs, batch_size=o.sampling_batch_size,
                        generator=sampling_generator(o.seed, SNAPSHOT_STREAM, run.ctx), ctx=run.ctx)
    samples = to_data_space(x.cpu(), run.data)
    if run.ctx.is_main:
        write_samples(samples, run.data, run.workdir / "snapshots", f"samples_{run.step:08d}")
        run.metrics.write({"step": run.step, **{f"snapshot_{k}": v for k, v in sample_stats(samples, run.data).items()}})


def after_step(run: TrainRun, loss: torch.Tensor, meter: LossMeter, bar) -> None:
    """Logging, held-out loss, checkpoints and snapshot samples, each at its own frequency."""
    o, step = run.options, run.step
    meter.add(loss)
    bar.update(1)
    if step % o.log_freq == 0:
        log_metrics(run, meter, bar)
    if step % o.eval_freq == 0:
        log_eval_loss(run)
    if step % o.checkpoint_freq == 0 or step % o.snapshot_freq == 0:
        save_checkpoint(run)
    if step % o.snapshot_freq == 0 and o.snapshot_sampling and o.snapshot_num_samples > 0:
        write_snapshot_samples(run)


def stop_requested(stop: GracefulStop, ctx: DistContext) -> bool:
    """Whether any rank received SIGTERM / SIGINT (all ranks agree, so all checkpoint together)."""
    if not ctx.distributed:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=ctx.device)
    return bool(all_reduce_mean(flag, ctx) > 0)


def run_loop(run: TrainRun, stop: GracefulStop) -> bool:
    """Train until ``n_iters`` or a stop signal; returns whether a signal stopped it."""
    meter = LossMeter()
    with progress_bar(run.options.n_iters, run.step, run.options.progress_bar) as bar:
        while run.step < run.options.n_iters:
            loss = train_step(run, next_batch(run))
            after_step(run, loss, meter, bar)
            if stop_requested(stop, run.ctx):
                return True
    return False


# ---------------------------------------------------------------------------------------- driver
def train(config: ml_collections.ConfigDict, workdir: str | Path, ctx: DistContext | None = None) -> dict:
    """The ``train`` mode; returns ``{"step", "stopped_by_signal"}``."""
    ctx = ctx or DistContext()
    run = setup_run(config, workdir, ctx)
    try:
        with GracefulStop() as stop:
            stopped = run_loop(run, stop)
            if run.last_saved != run.step:
                save_checkpoint(run)
        run.metrics.write({"step": run.step, "event": "stopped" if stopped else "finished"})
    finally:
        run.metrics.close()
    if stopped:
        logger.warning("%s received: checkpoint written at step %d; exiting", stop.signal_name or "signal", run.step)
    else:
        logger.info("training finished at step %d", run.step)
    return {"step": run.step, "stopped_by_signal": stopped}
