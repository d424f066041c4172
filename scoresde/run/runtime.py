"""Run-time plumbing of the drivers: GPU switches, graceful stop on signals, metrics and progress."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import signal
import sys
import threading
from pathlib import Path

import torch
from tqdm.auto import tqdm

from scoresde.run.checkpoint import atomic_write_text, checksum_path, list_checkpoints
from scoresde.run.options import Accel
from scoresde.run.threads import CpuLoad, ThreadFollower, follow

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- GPU switches
CUDA_ONLY = ("channels_last", "tf32")


def resolve_accel(device: torch.device, asked: Accel) -> Accel:
    """The switches asked for. bf16 autocast and ``torch.compile`` run on a CPU too (inductor compiles
    with the system C++ compiler), so the path GPUs take is exercised everywhere; channels_last and TF32
    apply on CUDA only and are ignored elsewhere, with one log line naming them."""
    if device.type == "cuda":
        return asked
    ignored = [f"training.{name}" for name in CUDA_ONLY if getattr(asked, name)]
    if ignored:
        logger.info("no CUDA device (running on %s): CUDA-only options ignored: %s", device, ", ".join(ignored))
    return Accel(bf16=asked.bf16, compile=asked.compile)


def apply_tf32(accel: Accel) -> None:
    """TF32 matmuls and cuDNN convolutions (Ampere and later) when switched on."""
    if accel.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def apply_accel(accel: Accel, device: torch.device) -> None:
    """The switches that are process-wide settings (TF32 for now; cuDNN's autotuner is left off)."""
    apply_tf32(accel)


def autocast(accel: Accel, device: torch.device, cache: bool = True):
    """bfloat16 autocast of the forward pass on ``device`` when ``accel.bf16``, else a no-op context.
    ``cache=False`` re-casts the weights at every use (needed inside a captured CUDA graph)."""
    if accel.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def compile_options(device: torch.device) -> dict:
    """``torch.compile``'s arguments for the training step: on CUDA ``mode="reduce-overhead"`` (the
    compiled kernels are replayed from CUDA graphs, so small networks are not bound by kernel
    launches), else the defaults (inductor's C++ code through the system compiler)."""
    return {"mode": "reduce-overhead"} if device.type == "cuda" else {}


def accelerated_score_fn(score_fn, accel: Accel, device: torch.device):
    """``score_fn`` under bf16 autocast when asked, returning the dtype of its input (samplers
    integrate in the data's precision)."""
    if not accel.bf16:
        return score_fn

    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast(accel, device):
            out = score_fn(x, t)
        return out.to(x.dtype)

    for name in ("variance_fn", "with_variance"):      # a learned variance travels with its score
        if hasattr(score_fn, name):
            setattr(score, name, getattr(score_fn, name))
    return score


def memory_format(x: torch.Tensor, accel: Accel) -> torch.Tensor:
    """NHWC layout for image batches when ``channels_last`` is on."""
    if accel.channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------------------------------- threads
def cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 ``cfs_quota_us``), if any."""
    candidates = [("/sys/fs/cgroup/cpu.max", None),
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")]
    for quota_file, period_file in candidates:
        try:
            if period_file is None:
                quota, period = Path(quota_file).read_text().split()[:2]
            else:
                quota, period = Path(quota_file).read_text().strip(), Path(period_file).read_text().strip()
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and float(period) > 0:
            return float(quota) / float(period)
    return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_limit()
    return max(1, min(cores, math.floor(quota))) if quota else cores


def busy_cores(window_s: float = 0.3) -> float:
    """How many of this process's cores other processes keep busy now, over a short window while
    this process sleeps (the load average reacts over a minute, too slowly for this)."""
    load = CpuLoad()
    time.sleep(window_s)
    busy = load.others_busy()
    return 0.0 if busy is None else busy


def omp_threads() -> int | None:
    """The thread count ``OMP_NUM_THREADS`` sets, if it is a positive number."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else None


def choose_threads(asked: int, local_processes: int = 1, busy: float | None = None) -> tuple[int, str]:
    """Intra-op threads and why: ``asked`` if > 0; else ``OMP_NUM_THREADS`` if set; else the cores
    this process may use (affinity, cgroup quota), shared by the local ``torchrun`` processes, less
    those other processes keep busy right now. Measured (bench/train_throughput.py --busy): with every
    core's thread a busy neighbour cuts training to 20 % of its quiet speed (the threads wait on each
    other), with the free cores only it keeps 48-58 % of the quiet speed of all cores."""
    if asked > 0:
        return asked, "training.threads"
    if omp_threads():
        return omp_threads(), "OMP_NUM_THREADS"
    cores = max(1, available_cores() // max(local_processes, 1))
    busy = busy_cores() if busy is None else busy
    free = max(1, min(cores, round(available_cores() - busy) // max(local_processes, 1)))
    return free, (f"{available_cores()} available cores, {busy:.1f} busy with other work, "
                  f"{local_processes} local process(es)")


def local_processes() -> int:
    """Processes of this job on this machine (``torchrun`` sets ``LOCAL_WORLD_SIZE``; else 1)."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


# On a GPU the host only launches kernels and gathers small batches: more intra-op threads there
# spin in OpenMP's barrier between tiny CPU ops and burn cores without speeding anything up.
FEEDER_THREADS = 2


def set_threads(asked: int, local_processes: int = 1, device: torch.device | None = None) -> int:
    """Apply ``choose_threads`` to this process and log the choice; with a CUDA ``device`` at most
    ``FEEDER_THREADS`` unless ``asked``. When the count is the automatic one of a single CPU process,
    ``threads.tick()`` in the loops then follows the machine's load (``threads.ThreadFollower``)."""
    threads, why = choose_threads(asked, local_processes)
    on_cuda = device is not None and device.type == "cuda"
    if on_cuda and asked <= 0 and threads > FEEDER_THREADS:
        threads, why = FEEDER_THREADS, f"the host only feeds {device}"
    torch.set_num_threads(threads)
    auto = asked <= 0 and omp_threads() is None and not on_cuda and local_processes == 1
    follow(ThreadFollower(available_cores(), CpuLoad(), threads=threads) if auto else None)
    logger.info("intra-op threads: %d (%s)%s", threads, why, "; following the load" if auto else "")
    return threads


# ---------------------------------------------------------------------------------------- signals
class SecondInterrupt(KeyboardInterrupt):
    """A second SIGINT while ``GracefulStop`` was stopping the run."""


class GracefulStop:
    """While active, SIGTERM and SIGINT only set ``requested``; the training loop checkpoints at the
    next step boundary and returns. A second SIGINT aborts at once: one line on stderr naming the last
    complete checkpoint in ``checkpoint_dir`` (the one being written is abandoned; its temporary file is
    removed on the way out) and exit status 130 (``SystemExit``), no traceback."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint_dir: str | Path | None = None):
        self.requested = False
        self.signum: int | None = None
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise SecondInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if exc_type is not None and issubclass(exc_type, SecondInterrupt):
            print(f"main.py: interrupted again while stopping (second SIGINT): exiting without a new checkpoint; "
                  f"{self.last_complete_checkpoint()}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGINT) from None

    def last_complete_checkpoint(self) -> str:
        """Where training resumes from: the newest checkpoint with its checksum in ``checkpoint_dir``."""
        if self.checkpoint_dir is None:
            return "the newest complete checkpoint in the work directory's checkpoints/ is kept"
        complete = [p for _, p in list_checkpoints(self.checkpoint_dir) if checksum_path(p).is_file()]
        if not complete:
            return f"no complete checkpoint in {self.checkpoint_dir} yet: the next run starts from scratch"
        return f"the last complete checkpoint is {complete[-1]} (the next run resumes from it)"

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# ---------------------------------------------------------------------------------------- metrics
def _tensorboard_writer(log_dir: Path):
    """A ``SummaryWriter`` if ``torch.utils.tensorboard`` imports, else ``None`` (never required)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("TensorBoard not installed; metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsWriter:
    """JSON lines in ``path`` (one object per record, each with ``step``) and optionally TensorBoard.
    Disabled writers (non-zero ranks) accept records and drop them."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard_dir: Path | None = None):
        self.path, self.enabled = Path(path), enabled
        self._tb = _tensorboard_writer(tensorboard_dir) if enabled and tensorboard_dir is not None else None

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint a resumed run starts from) and a
        torn last line (a crash mid-append), with a warning; the file is rewritten atomically."""
        if not (self.enabled and self.path.is_file()):
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise ValueError(f"{self.path}: line {number} is not JSON (only a torn last line is "
                                     f"dropped): {line[:80]!r}") from None
                logger.warning("%s: dropping a torn last line (a crash while it was written): %r",
                               self.path, line[:80])
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def bars_enabled(asked: bool) -> bool:
    """Progress bars when asked for and stderr is a terminal (never in log files)."""
    return asked and sys.stderr.isatty()


def progress_bar(total: int, initial: int = 0, enabled: bool = True, unit: str = "step", desc: str | None = None):
    """A tqdm bar; off when not asked for, or when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True,
                disable=not bars_enabled(enabled))


class _AboveBars:
    """A stream for log handlers: each line goes through ``tqdm.write``, which clears the bar, prints
    the line and redraws the bar below it (so log lines never glue onto a bar)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.strip():
            tqdm.write(text.rstrip("\n"), file=self.stream)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def logs_above_bars():
    """Route console log handlers (absl's included) through ``tqdm.write`` while bars are shown."""
    swapped = []
    for handler in logging.root.handlers:
        target = getattr(handler, "_python_handler", handler)       # absl wraps a StreamHandler
        if isinstance(target, logging.StreamHandler) and target.stream in (sys.stderr, sys.stdout):
            swapped.append((target, target.stream))
            target.setStream(_AboveBars(target.stream))
    try:
        yield
    finally:
        for target, stream in swapped:
            target.setStream(stream)
