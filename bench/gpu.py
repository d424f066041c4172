"""One GPU, one command: how close training and sampling come to the chip, in a table.

    python bench/gpu.py            # one CUDA GPU, at most ~6 minutes
    python bench/gpu.py --smoke    # the same code on a CPU with tiny sizes (< 2 minutes)

Rows (each against baselines measured in the same run):
- the bf16 matrix-product ceiling (8192^3, random data), TFLOP/s;
- CIFAR-10 DDPM++ cont. (``configs/cifar10/ddpmpp_vp.py``, 62M parameters, batch 128, synthetic
  CIFAR-shaped data): the trainer's step (``next_batch`` + ``train_step``) against a bare loop of the
  same network (DSM loss, fused Adam, clipping, EMA), eager and compiled, bf16 + channels_last and
  fp32 + TF32: img/s, TFLOP/s (``FlopCounterMode`` on one forward + backward) and share of the ceiling;
- diffusers' ``UNet2DModel`` in the DDPM CIFAR-10 layout, bare loop, eager and compiled (if diffusers imports);
- where the trainer's compiled step spends its time: per phase (CUDA events) and the top kernels;
- the digits job end to end (``configs/digits/ddpmpp_vp.py``, 3000 steps) with the host CPU time;
- sampling img/s at 20 NFE, batch 512 (``samplers.fast_sample``), eager and with a compiled network;
- the host syncs of one ``fast_sample`` call, with where they come from;
- then ``pytest -q -k cuda tests/unit``.
Compiled rows cost a compilation each; rows past ``--budget`` seconds are skipped and say so.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import resource
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch
from torch.utils.flop_counter import FlopCounterMode

from scoresde import samplers
from scoresde.cli import main as cli_main
from scoresde.cli.factory import options_from_config
from scoresde.configs.cifar10.ddpmpp_vp import get_config as cifar10_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.data.pipeline import DataSpec
from scoresde.models import get_score_fn
from scoresde.run.distributed import DistContext
from scoresde.run.options import Accel
from scoresde.run.runtime import accelerated_score_fn, apply_accel, autocast
from scoresde.train import loop as trainer
from scoresde.train.losses import dsm_loss

PRECISIONS = {"bf16+CL": ("bf16", "channels_last", "tf32"), "fp32+TF32": ("tf32",)}


@dataclass
class Sizes:
    """What the full run and ``--smoke`` differ in."""
    device: str
    matmul: int = 8192
    batch: int = 128
    steps: int = 20
    digits_steps: int = 3000
    sample_batch: int = 512
    nfe: int = 20
    shrink: bool = False          # tiny networks (smoke)


def full_sizes() -> Sizes:
    return Sizes("cuda")


def smoke_sizes() -> Sizes:
    return Sizes("cpu", matmul=256, batch=4, steps=2, digits_steps=8, sample_batch=4, nfe=3, shrink=True)


class Clock:
    """Wall time since start; ``left`` says whether an optional row still fits in the budget."""

    def __init__(self, budget: float):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> bool:
        return self.elapsed() < self.budget


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------- ceiling
def matmul_ceiling(s: Sizes) -> float:
    """bf16 matrix-product TFLOP/s on random data: median of timed products after warm-up."""
    n = s.matmul
    a, b = (torch.randn(n, n, device=s.device, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n ** 3 / median_seconds(lambda: a @ b, s.device, repeats=10 if s.device == "cuda" else 2) / 1e12


def median_seconds(fn, device: str, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------------------------------- workloads
def cifar_config(s: Sizes, flags=()):
    config = cifar10_config()
    config.device = s.device
    t = config.training
    t.batch_size, t.progress_bar, t.tensorboard = s.batch, False, False
    for flag in ("bf16", "compile", "channels_last", "tf32"):
        t[flag] = flag in flags
    if s.shrink:
        m = config.model
        m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, (1, 2), 1, (16,)
    return config


def synthetic_cifar10(n: int) -> DataSpec:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return DataSpec(name="cifar10", train=images, test=images[:64], shape=(3, 32, 32), num_levels=256,
                    centered=True, random_flip=True)


def step_flops(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward of ``net`` (matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        net(x, t).float().square().mean().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def trainer_rate(s: Sizes, flags, workdir: str) -> tuple[float, trainer.TrainRun]:
    """img/s of the trainer's ``next_batch`` + ``train_step``, after warm-up (and compilation or capture)."""
    run = trainer.setup_run(options_from_config(cifar_config(s, flags)), workdir, DistContext(),
                            data=synthetic_cifar10(4 * s.batch))
    step = lambda: trainer.train_step(run, *trainer.next_batch(run))  # noqa: E731
    for _ in range(trainer.CapturedGradientStep.WARMUP + 2):
        step()
    seconds = median_seconds(lambda: [step() for _ in range(s.steps)], s.device, repeats=3, warmup=0)
    run.metrics.close()
    return s.batch * s.steps / seconds, run


def bare_rate(s: Sizes, net: torch.nn.Module, flags, compiled: bool) -> float:
    """img/s of a plain PyTorch loop on ``net``: DSM loss, fused Adam, clipping, EMA (torch._foreach_lerp_)."""
    options = options_from_config(cifar_config(s, flags))
    accel = Accel(bf16="bf16" in flags, channels_last="channels_last" in flags, tf32="tf32" in flags)
    apply_accel(accel, torch.device(s.device))
    net = net.to(memory_format=torch.channels_last) if accel.channels_last else net
    model = torch.compile(net) if compiled else net
    sde = options.sde.build()
    score_fn = get_score_fn(sde, model, train=True, **options.network.score_kwargs)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, fused=s.device == "cuda")
    averaged = [p.detach().clone() for p in net.parameters()]
    data = torch.rand(4 * s.batch, 3, 32, 32, device=s.device) * 2 - 1
    memory = torch.channels_last if accel.channels_last else torch.contiguous_format

    def step():
        x = data[torch.randint(0, len(data), (s.batch,), device=s.device)].contiguous(memory_format=memory)
        with autocast(accel, torch.device(s.device)):
            loss = dsm_loss(sde, score_fn, x).float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(averaged, [p.detach() for p in net.parameters()], 1e-4)

    for _ in range(3):
        step()
    return s.batch * s.steps / median_seconds(lambda: [step() for _ in range(s.steps)], s.device, 3, 0)


def cifar_network(s: Sizes) -> torch.nn.Module:
    options = options_from_config(cifar_config(s))
    torch.manual_seed(0)
    return options.network.build((3, 32, 32)).to(s.device)


def diffusers_unet(s: Sizes):
    """diffusers' ``UNet2DModel`` in the DDPM CIFAR-10 layout, as ``forward(x, t) -> tensor``; None without diffusers."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    channels = (8, 16, 16, 16) if s.shrink else (128, 256, 256, 256)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=channels,
                       norm_num_groups=8 if s.shrink else 32,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t).sample

    return Plain().to(s.device)


# ---------------------------------------------------------------------------------------- where the time goes
def phase_times(run: trainer.TrainRun, s: Sizes, steps: int = 10) -> dict:
    """Mean ms per step of each phase of ``train_step``, timed with CUDA events (CPU: host clock)."""
    from scoresde.train.optim import optimize_step
    phases = {"batch": 0.0, "noise": 0.0, "forward+backward": 0.0, "clip+Adam": 0.0, "EMA": 0.0}
    o = run.options.optim
    for _ in range(steps):
        marks = [_mark(s.device)]
        x, labels = trainer.next_batch(run)
        marks.append(_mark(s.device))
        noise = trainer.loss_noise(run, x)
        marks.append(_mark(s.device))
        loss = run.update(x, noise, labels)
        marks.append(_mark(s.device))
        optimize_step(run.optimizer, run.model.parameters(), run.step + 1, o.lr, o.warmup, o.grad_clip, loss=loss)
        marks.append(_mark(s.device))
        run.ema.update(run.model)
        marks.append(_mark(s.device))
        run.step += 1
        sync(s.device)
        for name, a, b in zip(phases, marks, marks[1:]):
            phases[name] += _elapsed_ms(a, b) / steps
    return phases


def _mark(device: str):
    if device != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def _elapsed_ms(a, b) -> float:
    return a.elapsed_time(b) if isinstance(a, torch.cuda.Event) else (b - a) * 1e3


def top_kernels(run: trainer.TrainRun, s: Sizes, k: int = 12) -> str:
    """The profiler's top ``k`` device kernels over 5 trainer steps."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(5):
            trainer.train_step(run, *trainer.next_batch(run))
        sync(s.device)
    key = "self_cuda_time_total" if s.device == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=k, max_name_column_width=70)


# ---------------------------------------------------------------------------------------- digits and sampling
def digits_job(s: Sizes, workdir: str) -> tuple[float, float]:
    """Wall and host CPU seconds (all threads) of ``main.py --mode train`` on the digits config."""
    config = digits_config()
    config.device = s.device
    t = config.training
    t.n_iters, t.progress_bar, t.tensorboard = s.digits_steps, False, False
    if s.shrink:
        t.eval_freq = t.checkpoint_freq = t.snapshot_freq = s.digits_steps
        t.snapshot_num_samples, config.model.num_scales = 4, 50
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    cli_main.run(config, workdir, "train")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def sampling_rate(s: Sizes, net: torch.nn.Module, flags, compiled: bool) -> float:
    """img/s of ``fast_sample`` at ``s.nfe`` score evaluations (``steps = nfe - 1`` plus the final denoising)."""
    options = options_from_config(cifar_config(s, flags))
    accel = Accel(bf16="bf16" in flags, channels_last="channels_last" in flags, tf32="tf32" in flags)
    apply_accel(accel, torch.device(s.device))
    net = (net.to(memory_format=torch.channels_last) if accel.channels_last else net).eval()
    sde = options.sde.build()
    score = accelerated_score_fn(get_score_fn(sde, torch.compile(net) if compiled else net, train=False,
                                              **options.network.score_kwargs), accel, torch.device(s.device))
    shape = (s.sample_batch, 3, 32, 32)
    draw = lambda: samplers.fast_sample(sde, score, shape, steps=s.nfe - 1, device=s.device)  # noqa: E731
    _, nfe = draw()
    assert nfe == s.nfe, nfe
    return s.sample_batch / median_seconds(draw, s.device, repeats=3, warmup=1)


def sampler_syncs(s: Sizes) -> list[str]:
    """Where the host waits for the device during one ``fast_sample`` call (one sync, the final check, expected)."""
    if s.device != "cuda":
        return ["(no CUDA: not observable)"]
    sde = options_from_config(cifar_config(s)).sde.build()
    score = lambda x, t: -x  # noqa: E731
    run = lambda: samplers.fast_sample(sde, score, (64, 3, 8, 8), steps=10, device="cuda")  # noqa: E731
    run()
    where = []
    previous = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "scoresde" in f.filename]
            where.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[::-1][:3]))

    warnings.showwarning = record
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    warnings.showwarning = previous
    return where


# ---------------------------------------------------------------------------------------- the table
class Table:
    def __init__(self, ceiling: float):
        self.ceiling, self.rows, self.base = ceiling, [], {}

    def add(self, what: str, variant: str, rate: float | None, flops_per_item: float | None = None,
            base: str | None = None, note: str = "") -> None:
        """One row; ``base`` names an earlier row (``what|variant``) the rate is divided by."""
        key = f"{what}|{variant}"
        self.base[key] = rate
        tflops = rate * flops_per_item / 1e12 if rate and flops_per_item else None
        ratio = rate / self.base[base] if rate and base and self.base.get(base) else None
        self.rows.append((what, variant, rate, tflops, tflops / self.ceiling if tflops else None, base, ratio, note))
        print(f"  {what} / {variant}: {_num(rate)} {note}", flush=True)

    def print(self) -> None:
        print(f"\n| workload | variant | img/s | TFLOP/s | of bf16 ceiling | vs | ratio | note |")
        print("|---|---|---|---|---|---|---|---|")
        for what, variant, rate, tflops, share, base, ratio, note in self.rows:
            print(f"| {what} | {variant} | {_num(rate)} | {_num(tflops, 1)} | "
                  f"{'' if share is None else f'{share:.1%}'} | {(base or '').replace('|', ' / ')} | "
                  f"{'' if ratio is None else f'{ratio:.2f}x'} | {note} |")


def _num(value, digits: int = 0) -> str:
    return "skipped" if value is None else f"{value:,.{digits}f}"


SECTIONS = ("cifar", "diffusers", "digits", "sampling", "syncs", "tests")


def run_bench(s: Sizes, budget: float, sections=SECTIONS) -> Table:
    clock = Clock(budget)
    ceiling = matmul_ceiling(s)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if s.device == 'cuda' else 'CPU'}, "
          f"bf16 matmul ceiling {ceiling:.1f} TFLOP/s", flush=True)
    table = Table(ceiling)
    with tempfile.TemporaryDirectory() as tmp:
        for name in sections:
            if name != "tests":
                print(f"--- {name} ({clock.elapsed():.0f} s)", flush=True)
                SECTION_RUNNERS[name](s, clock, table, tmp)
    print(f"({clock.elapsed():.0f} s)")
    return table


def cifar_section(s: Sizes, clock: Clock, table: Table, tmp: str) -> None:
    net = cifar_network(s)
    x = torch.randn(s.batch, 3, 32, 32, device=s.device)
    flops = step_flops(net, x, torch.rand(s.batch, device=s.device) * 999) / s.batch
    print(f"DDPM++ cont.: {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters, "
          f"{flops * s.batch / 1e9:.1f} GFLOP per forward + backward at batch {s.batch}", flush=True)
    what, compiled_run = f"DDPM++ cont. b{s.batch}", None
    for precision, flags in PRECISIONS.items():
        rate, _ = trainer_rate(s, flags, f"{tmp}/eager-{precision}") if clock.left() else (None, None)
        table.add(what, f"trainer eager {precision}", rate, flops)
        rate = bare_rate(s, cifar_network(s), flags, False) if clock.left() else None
        table.add(what, f"bare eager {precision}", rate, flops)
    for precision, flags in PRECISIONS.items():
        rate, run = trainer_rate(s, flags + ("compile",), f"{tmp}/compiled-{precision}") if clock.left() \
            else (None, None)
        compiled_run = run if precision == "bf16+CL" else compiled_run
        table.add(what, f"trainer compiled {precision}", rate, flops, f"{what}|trainer eager {precision}")
        rate = bare_rate(s, cifar_network(s), flags, True) if clock.left() else None
        table.add(what, f"bare compiled {precision}", rate, flops, f"{what}|bare eager {precision}")
        if precision == "bf16+CL":
            table.add(what, "trainer / bare, compiled bf16+CL", table.base[f"{what}|trainer compiled bf16+CL"],
                      flops, f"{what}|bare compiled bf16+CL")
    if compiled_run is not None:
        print("\ntrainer, compiled bf16+CL, ms per step by phase:",
              {k: round(v, 2) for k, v in phase_times(compiled_run, s).items()})
        print(top_kernels(compiled_run, s), flush=True)


def diffusers_section(s: Sizes, clock: Clock, table: Table, tmp: str) -> None:
    unet = diffusers_unet(s)
    if unet is None:
        print("diffusers does not import: its rows are left out")
        return
    x = torch.randn(s.batch, 3, 32, 32, device=s.device)
    flops = step_flops(unet, x, torch.randint(0, 1000, (s.batch,), device=s.device)) / s.batch
    what = "diffusers UNet2DModel (DDPM CIFAR-10)"
    table.add(what, "bare eager bf16+CL", bare_rate(s, unet, PRECISIONS["bf16+CL"], False) if clock.left() else None,
              flops)
    rate = bare_rate(s, diffusers_unet(s), PRECISIONS["bf16+CL"], True) if clock.left() else None
    table.add(what, "bare compiled bf16+CL", rate, flops, f"{what}|bare eager bf16+CL")


def digits_section(s: Sizes, clock: Clock, table: Table, tmp: str) -> None:
    wall, cpu = digits_job(s, f"{tmp}/digits")
    table.add(f"digits job {s.digits_steps} steps", "end to end (as shipped)", s.digits_steps / wall,
              note=f"{wall:.1f} s wall, {cpu:.1f} s host CPU (rate in steps/s)")


def sampling_section(s: Sizes, clock: Clock, table: Table, tmp: str) -> None:
    what = f"fast_sample {s.nfe} NFE b{s.sample_batch}"
    table.add(what, "eager fp32+TF32", sampling_rate(s, cifar_network(s), PRECISIONS["fp32+TF32"], False))
    table.add(what, "eager bf16+CL", sampling_rate(s, cifar_network(s), PRECISIONS["bf16+CL"], False),
              base=f"{what}|eager fp32+TF32")
    rate = sampling_rate(s, cifar_network(s), PRECISIONS["bf16+CL"], True) if clock.left() else None
    table.add(what, "compiled bf16+CL", rate, base=f"{what}|eager fp32+TF32")


def syncs_section(s: Sizes, clock: Clock, table: Table, tmp: str) -> None:
    print("host syncs in one fast_sample call:", sampler_syncs(s), flush=True)


SECTION_RUNNERS = {"cifar": cifar_section, "diffusers": diffusers_section, "digits": digits_section,
                   "sampling": sampling_section, "syncs": syncs_section}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the code, not the chip)")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds after which optional rows are skipped")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated, run in this order: {','.join(SECTIONS)}")
    parser.add_argument("--tests", default="cuda", help="pytest -k expression for the CUDA tests")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if not args.smoke:
        faulthandler.dump_traceback_later(90, repeat=True)  # every 90 s: where a slow row is
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sizes = smoke_sizes() if args.smoke else full_sizes()
    if not args.smoke and not torch.cuda.is_available():
        parser.error("no CUDA device: use --smoke")
    with _smoke_compile() if args.smoke else contextlib.nullcontext():
        table = run_bench(sizes, args.budget, sections)
    table.print()
    if "tests" in sections and not args.smoke:
        import pytest
        root = Path(__file__).resolve().parents[1]
        pytest.main(["-q", "-p", "no:cacheprovider", "-k", args.tests, str(root / "tests" / "unit")])
    faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def _smoke_compile():
    """On the CPU, ``torch.compile`` traces with dynamo but generates no code (inductor's C++ build
    takes minutes there): the smoke run checks the code paths, not compiled speed."""
    real = torch.compile
    torch.compile = lambda model=None, **kwargs: real(model, backend="eager")
    try:
        yield
    finally:
        torch.compile = real


if __name__ == "__main__":
    main()
