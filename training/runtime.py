"""Run-time plumbing of the drivers: GPU switches, graceful stop on signals, metrics and progress."""
from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from training.checkpoint import atomic_write_text
from training.options import Accel

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- GPU switches
def resolve_accel(device: torch.device, asked: Accel) -> Accel:
    """The switches asked for, on CUDA; on any other device none, with one log line naming them."""
    if device.type == "cuda":
        return asked
    ignored = [f"training.{f.name}" for f in fields(Accel) if getattr(asked, f.name)]
    if ignored:
        logger.info("no CUDA device (running on %s): GPU-only options ignored: %s", device, ", ".join(ignored))
    return Accel()


def apply_tf32(accel: Accel) -> None:
    """TF32 matmuls and cuDNN convolutions (Ampere and later) when switched on."""
    if accel.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(accel: Accel):
    """bfloat16 autocast of the forward pass on CUDA, else a no-op context."""
    if accel.bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(x: torch.Tensor, accel: Accel) -> torch.Tensor:
    """NHWC layout for image batches when ``channels_last`` is on."""
    if accel.channels_last and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ---------------------------------------------------------------------------------------- signals
class GracefulStop:
    """While active, SIGTERM and SIGINT only set ``requested``; the training loop checkpoints at the
    next step boundary and returns. A second SIGINT aborts at once (``KeyboardInterrupt``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

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


def progress_bar(total: int, initial: int, enabled: bool):
    """A tqdm bar over training steps; off when asked, or when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))
