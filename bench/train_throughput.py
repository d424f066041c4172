"""Training throughput (optimizer steps/s and samples/s) with 1 and several processes, as ``torchrun``
would run them: the trainer's own ``next_batch`` + ``train_step`` (data transform, loss noise, forward,
backward, DDP all-reduce, clipping, Adam, EMA), timed after a warm-up.

    python -m bench.train_throughput                 # CPU: 1 and 2 processes, < 4 min on 2 cores
    python -m bench.train_throughput --procs 1,2,4 --steps 20

Workloads:
- ``digits``: ``configs/digits/ddpmpp_vp.py`` as shipped (tiny DDPM++ on 8x8 digits, global batch 128).
- ``cifar10-small``: ``configs/cifar10/ddpmpp_vp.py`` shrunk for a CPU (nf 32, 1 residual block per
  level, global batch 32; same 4 levels and attention at 16x16), on synthetic CIFAR-shaped uint8 data
  (throughput does not depend on pixel values; no download needed).
- ``cifar10``: the paper's DDPM++ cont. (nf 128, 4 blocks per level, batch 128): only with a GPU.

CPU runs use gloo and split the cores evenly (2 processes on 2 cores get 1 thread each). Per workload
the rows are 1 process with 1 thread (the base: what one core does), 1 process with all cores, then the
multi-process runs. With CUDA the bench also runs 1 GPU in fp32, with TF32, bf16 autocast,
channels_last and torch.compile (the config's ``training.*`` switches), and all visible GPUs (NCCL) with
bf16 + channels_last + TF32. "vs base" is the ratio to the first row of the same workload and device
(1 process with 1 thread / 1 GPU in fp32), measured in the same invocation. On a machine whose cores
are busy with other work, extra threads and processes find no free core: compare with ``uptime``.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import torch
import torch.multiprocessing as mp

from scoresde.configs.cifar10.ddpmpp_vp import get_config as cifar10_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.train import loop as trainer
from scoresde.train.optim import clip_gradients, set_lr, warmup_lr
from scoresde.run.distributed import DistContext, barrier, cleanup, init_distributed
from scoresde.cli.factory import options_from_config
from scoresde.data.pipeline import DataSpec
from scoresde.train.loop import next_batch, setup_run, train_step

FLAGS = ("bf16", "compile", "channels_last", "tf32")


@dataclass(frozen=True)
class Case:
    workload: str
    device: str                 # "cpu" | "cuda"
    procs: int
    threads: int                # intra-op threads per process
    flags: tuple = ()           # the training.* GPU switches turned on
    label: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------- workloads
def _small_cifar(config):
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 32, (1, 2, 2, 2), 1, (16,)
    config.training.batch_size = 32
    return config


WORKLOADS = {
    "toy": gmm_config,
    "digits": digits_config,
    "cifar10-small": lambda: _small_cifar(cifar10_config()),
    "cifar10": cifar10_config,
}


def workload_config(case: Case):
    config = WORKLOADS[case.workload]()
    config.device = case.device
    for flag in FLAGS:
        config.training[flag] = flag in case.flags
    config.training.tensorboard = config.training.progress_bar = False
    return config


def synthetic_cifar10(n: int = 1024) -> DataSpec:
    """CIFAR-shaped random uint8 images with the CIFAR config's data settings."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return DataSpec(name="cifar10", train=images, test=images[:64], shape=(3, 32, 32), num_levels=256,
                    centered=True, random_flip=True)


def workload_data(case: Case) -> DataSpec | None:
    """Synthetic data for the CIFAR-shaped workloads; ``None`` lets the trainer load the digits."""
    return synthetic_cifar10() if case.workload.startswith("cifar10") else None


# ---------------------------------------------------------------------------------------- measuring
def _sync(ctx: DistContext) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    barrier(ctx)


def measure(case: Case, ctx: DistContext, warmup: int, steps: int) -> dict:
    """Steps/s of ``next_batch`` + ``train_step`` over ``steps`` steps after ``warmup`` steps."""
    config = workload_config(case)
    with tempfile.TemporaryDirectory() as workdir:
        run = setup_run(options_from_config(config), workdir, ctx, data=workload_data(case))
        for _ in range(warmup):
            train_step(run, *next_batch(run))
        _sync(ctx)
        start = time.perf_counter()
        for _ in range(steps):
            train_step(run, *next_batch(run))
        _sync(ctx)
        elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in run.model.parameters())
    return {"steps_per_s": steps / elapsed, "batch": config.training.batch_size, "params": params}


def _worker(rank: int, case: Case, port: int, warmup: int, steps: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(case.procs), LOCAL_RANK=str(rank))
    torch.set_num_threads(case.threads)
    ctx = init_distributed(case.device)
    try:
        result = measure(case, ctx, warmup, steps)
    finally:
        cleanup(ctx)
    if rank == 0:
        queue.put(result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(case: Case, warmup: int, steps: int) -> dict:
    """``case.procs`` fresh processes (a world of one for 1), as torchrun would start them."""
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_worker, args=(case, _free_port(), warmup, steps, queue), nprocs=case.procs, join=True)
    return queue.get()


# ---------------------------------------------------------------------------------------- guard overhead
def _unguarded_optimize_step(optimizer, params, update, lr, warmup, grad_clip, loss=None):
    """The update without the non-finite guard (no isfinite, no found_inf): the baseline."""
    current = warmup_lr(update, lr, warmup)
    set_lr(optimizer, current)
    grad_norm = clip_gradients(params, grad_clip)
    optimizer.grad_scale = optimizer.found_inf = None
    optimizer.step()
    return current, grad_norm, torch.zeros((), dtype=torch.bool, device=grad_norm.device)


def _steps_per_s(run, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(run, *trainer.next_batch(run))
    return steps / (time.perf_counter() - start)


def guard_overhead(workload: str, steps: int, repeats: int = 5) -> tuple[float, float]:
    """Median steps/s of the trainer's step with and without the non-finite guard (one process, one
    thread), alternating the two on one run so that machine noise hits both alike."""
    torch.set_num_threads(1)
    case = Case(workload, "cpu", 1, 1)
    guarded_step, guarded_record = trainer.optimize_step, trainer.SkipCounter.record
    with tempfile.TemporaryDirectory() as workdir:
        run = setup_run(options_from_config(workload_config(case)), workdir, DistContext(), data=workload_data(case))
        _steps_per_s(run, 3)
        rates = {True: [], False: []}
        for _ in range(repeats):
            for guard in (True, False):
                trainer.optimize_step = guarded_step if guard else _unguarded_optimize_step
                trainer.SkipCounter.record = guarded_record if guard else (lambda self, skipped, step: None)
                rates[guard].append(_steps_per_s(run, steps))
        trainer.optimize_step, trainer.SkipCounter.record = guarded_step, guarded_record
        run.metrics.close()
    return float(np.median(rates[True])), float(np.median(rates[False]))


def print_guard_overhead(steps: int) -> None:
    print("\nnon-finite guard (isfinite of the gradient norm, fused Adam's found_inf, device-side counters):")
    print(f"| {'workload':<8} | {'with guard':>10} | {'without':>10} | {'ratio':>6} |")
    print("|" + "|".join("-" * w for w in (10, 12, 12, 8)) + "|")
    for workload, n in (("toy", 20 * steps), ("digits", steps)):
        on, off = guard_overhead(workload, n)
        print(f"| {workload:<8} | {on:10.2f} | {off:10.2f} | {on / off:6.3f} |")


# ---------------------------------------------------------------------------------------- bare loop
def bare_loop_rate(run, steps: int) -> float:
    """Steps/s of a plain PyTorch loop with the trainer's network, fused Adam, EMA, batch and loss
    (the same importance-sampled, likelihood-weighted DSM for the toy config): the floor the trainer's
    bookkeeping (data pipeline, seeded noise, warm-up, clipping, non-finite guard) is measured against."""
    from scoresde.models import get_score_fn
    from scoresde.train.losses import dsm_loss
    model, sde, data = run.model, run.sde, run.data.train
    optimizer = torch.optim.Adam(model.parameters(), lr=run.options.optim.lr, fused=True)
    averaged = [p.detach().clone() for p in model.parameters()]
    batch, kwargs = run.options.train.batch_size, dict(run.options.loss.kwargs)
    score_fn = get_score_fn(sde, model, train=True, **run.options.network.score_kwargs)
    gen = torch.Generator().manual_seed(0)

    def step():
        x = data[torch.randint(0, len(data), (batch,), generator=gen)].float()
        loss = dsm_loss(sde, score_fn, x, generator=gen, **kwargs).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 0.001)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def print_bare_loop(steps: int, repeats: int = 5) -> None:
    """The trainer's step against the bare loop, alternated in one process (toy main job, 1 thread)."""
    torch.set_num_threads(1)
    case = Case("toy", "cpu", 1, 1)
    with tempfile.TemporaryDirectory() as workdir:
        run = setup_run(options_from_config(workload_config(case)), workdir, DistContext())
        torch.set_num_threads(1)
        trainer_rates, bare_rates = [], []
        for _ in range(repeats):
            trainer_rates.append(_steps_per_s(run, steps))
            bare_rates.append(bare_loop_rate(run, steps))
        run.metrics.close()
    t, b = float(np.median(trainer_rates)), float(np.median(bare_rates))
    print("\ntoy main job, 1 thread: the trainer's step against a bare PyTorch loop (same network, fused Adam, "
          "EMA, batch, loss):")
    print(f"| trainer steps/s | bare loop steps/s | trainer / bare |\n|---|---|---|\n| {t:.1f} | {b:.1f} | {t / b:.3f} |")


# ---------------------------------------------------------------------------------------- busy neighbour
_BUSY = """
import torch
a = torch.randn(1500, 1500)
while True:
    a = torch.tanh(a @ a) * 0.1 + 1.0
"""

_POLICY_RUN = """
import os, sys, time, tempfile
sys.path.insert(0, {repo!r})
import torch
from bench.train_throughput import workload_config, Case
from scoresde.run.distributed import DistContext
from scoresde.cli.factory import options_from_config
from scoresde.train.loop import next_batch, setup_run, train_step
config = workload_config(Case({workload!r}, "cpu", 1, 1))
config.training.threads = {threads}
with tempfile.TemporaryDirectory() as workdir:
    run = setup_run(options_from_config(config), workdir, DistContext())
    for _ in range(5):
        train_step(run, *next_batch(run))
    start = time.perf_counter()
    for _ in range({steps}):
        train_step(run, *next_batch(run))
    print((time.perf_counter() - start), torch.get_num_threads(), flush=True)
"""

# before: torch's default (a thread per core); after: the toolkit's policy (the cores not busy now)
POLICIES = {"before (torch default: a thread per core)": ({}, -1),
            "after (training.threads=0: the free cores)": ({}, 0)}


def _policy_rate(workload: str, env: dict, threads: int, steps: int) -> tuple[float, int]:
    """Steps/s of ``workload`` in a fresh process (the OpenMP runtime reads its environment once)."""
    repo = str(Path(__file__).resolve().parents[1])
    child_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    child_env.update(env)
    code = _POLICY_RUN.format(repo=repo, workload=workload, threads=max(threads, 0) if threads >= 0 else
                              len(os.sched_getaffinity(0)), steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, check=True)
    elapsed, used = out.stdout.split()[-2:]
    return steps / float(elapsed), int(used)


def print_busy_neighbour(workload: str, steps: int) -> None:
    """The main job's training alone and beside a busy 2-thread process, before and after the policy."""
    print(f"\n{workload}: training alone and beside a busy neighbour (a 2-thread matrix-multiply loop):")
    print(f"| {'thread policy':<48} | {'threads':>7} | {'quiet':>8} | {'busy':>8} | {'busy / quiet':>12} |")
    print("|" + "|".join("-" * w for w in (50, 9, 10, 10, 14)) + "|")
    for name, (env, threads) in POLICIES.items():
        quiet, used = _policy_rate(workload, env, threads, steps)
        neighbour = subprocess.Popen([sys.executable, "-c", _BUSY], env={**os.environ, "OMP_NUM_THREADS": "2"})
        try:
            time.sleep(2.0)
            busy, _ = _policy_rate(workload, env, threads, steps)
        finally:
            neighbour.kill()
            neighbour.wait()
        print(f"| {name:<48} | {used:>7} | {quiet:8.1f} | {busy:8.1f} | {busy / quiet:11.0%} |")


# ---------------------------------------------------------------------------------------- plan and table
def cpu_cases(workloads, procs, cores: int) -> list[Case]:
    """Per workload: 1 process with 1 thread (the base), 1 process with all cores, then ``procs``
    processes sharing the cores."""
    plan = [(1, 1)] + ([(1, cores)] if cores > 1 else []) + [(p, max(1, cores // p)) for p in procs if p > 1]
    return [Case(w, "cpu", p, threads, label="fp32") for w in workloads for p, threads in plan]


def gpu_cases(workloads, gpus: int) -> list[Case]:
    variants = [((), "fp32"), (("tf32",), "tf32"), (("bf16", "tf32"), "bf16"),
                (("bf16", "channels_last", "tf32"), "bf16+channels_last"),
                (("bf16", "channels_last", "tf32", "compile"), "bf16+channels_last+compile")]
    cases = [Case(w, "cuda", 1, 1, flags, label) for w in workloads for flags, label in variants]
    if gpus > 1:
        cases += [Case(w, "cuda", gpus, 1, variants[3][0], variants[3][1]) for w in workloads]
    return cases


def print_table(rows: list[tuple[Case, dict]]) -> None:
    print(f"| {'workload':<13} | {'device':<6} | {'procs':>5} | {'threads':>7} | {'precision / layout':<26} | "
          f"{'params':>7} | {'batch':>5} | {'steps/s':>8} | {'samples/s':>9} | {'vs base':>9} |")
    print("|" + "|".join("-" * w for w in (15, 8, 7, 9, 28, 9, 7, 10, 11, 11)) + "|")
    base = {}
    for case, r in rows:
        key = (case.workload, case.device)
        base.setdefault(key, r["steps_per_s"])
        print(f"| {case.workload:<13} | {case.device:<6} | {case.procs:>5} | {case.threads:>7} | {case.label:<26} | "
              f"{r['params'] / 1e6:6.2f}M | {r['batch']:>5} | {r['steps_per_s']:8.2f} | "
              f"{r['steps_per_s'] * r['batch']:9.1f} | {r['steps_per_s'] / base[key]:8.2f}x |")


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=_int_list, default=[1, 2], help="CPU process counts")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA runs even with a GPU")
    parser.add_argument("--guard-only", action="store_true", help="only the non-finite guard's overhead")
    parser.add_argument("--busy", action="store_true", help="only the thread policy beside a busy neighbour")
    parser.add_argument("--bare", action="store_true", help="only the trainer against a bare PyTorch loop")
    args = parser.parse_args(argv)
    if args.guard_only:
        print_guard_overhead(args.steps)
        return
    if args.busy:
        print_busy_neighbour("toy", 40 * args.steps)
        print_busy_neighbour("digits", 2 * args.steps)
        return
    if args.bare:
        print_bare_loop(40 * args.steps)
        return
    cores = len(os.sched_getaffinity(0))
    cases = cpu_cases(["digits", "cifar10-small"], args.procs, cores)
    if torch.cuda.is_available() and not args.no_gpu:
        cases += gpu_cases(["digits", "cifar10"], torch.cuda.device_count())
    print(f"torch {torch.__version__}, {cores} CPU cores (load average {os.getloadavg()[0]:.2f}), CUDA devices: "
          f"{torch.cuda.device_count()}; {args.warmup} warm-up + {args.steps} timed steps per row")
    start, rows = time.time(), []
    for case in cases:
        rows.append((case, run_case(case, args.warmup, args.steps)))
    print_table(rows)
    print_guard_overhead(args.steps)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
