"""Where a run keeps its files, relative to its work directory. Every mode reads the names from here.

    <workdir>/.lock                      held by the running trainer (``WorkdirLock``)
    <workdir>/config.json                resolved config of the last ``train``
    <workdir>/checkpoints/checkpoint_<step>.pt (+ .sha256, + .snapshot for a snapshot kept for good)
    <workdir>/metrics.jsonl              training metrics, one JSON object per line
    <workdir>/loss_curve.png             training and held-out loss against step, redrawn at each eval
    <workdir>/snapshots/samples_<step>.npz / .png
    <workdir>/tensorboard/
    <workdir>/eval/metrics.json, config.json                    the latest evaluation; each run also in
    <workdir>/eval/step<step>[-k]/                               its own folder, kept
    <workdir>/samples/samples.npz / .png, info.json, config.json  the latest samples; each run also in
    <workdir>/samples/step<step>_<sampler>[-k]/                  its own folder, kept
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from scoresde.run.checkpoint import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
LOSS_CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "config.json"


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / CHECKPOINT_DIR


def config_path(workdir: str | Path, mode: str) -> Path:
    """Where ``mode`` saves the resolved config it ran with."""
    folder = {"train": "", "eval": EVAL_DIR, "sample": SAMPLES_DIR}[mode]
    return Path(workdir) / folder / CONFIG_FILE


LOCK_FILE = ".lock"


class WorkdirBusyError(RuntimeError):
    """Another process holds the work directory's lock."""


class WorkdirLock:
    """An exclusive OS lock (``fcntl.flock``) on ``<workdir>/.lock`` for as long as a trainer runs.

    The holder writes its process id, host and start time into the file. The OS drops the lock when the
    holder exits, however it dies (kill -9 included), so a stale file never blocks a new run. A second
    trainer fails at once with ``WorkdirBusyError`` naming the holder. Eval and sample take no lock.
    """

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise WorkdirBusyError(f"{self.path.parent} is in use by another trainer ({holder}); wait for it to "
                                   f"finish or stop it, or train in another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def write_loss_curve(workdir: str | Path, options, title: str | None = None, caption: str | None = None) -> Path:
    """``<workdir>/loss_curve.png``: training and held-out loss, and the eval likelihood where it was
    measured, against step, from ``metrics.jsonl``; ``options`` (``RunOptions``) names the run (a score
    model's data, process, network and loss) unless ``title`` and ``caption`` say what else it is."""
    from scoresde.run.plots import loss_curve     # matplotlib only when a figure is drawn

    path = Path(workdir) / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    title = title or f"{options.data.dataset}, {options.sde.name}, {options.network.name}"
    caption = caption or (options.loss.describe if options.distill is None else options.distill.describe)
    target = Path(workdir) / LOSS_CURVE_FILE
    atomic_write_bytes(target, loss_curve(records, title=title, caption=f"loss: {caption}"))
    return target


class NonFiniteResultsError(RuntimeError):
    """Some likelihoods or samples came out NaN or inf; the results were written with their count."""


def make_fresh_folder(directory: Path, name: str) -> Path:
    """Create ``directory/name``, or ``name-2``, ``name-3``, ... if taken: a new folder per run. Each
    ``mkdir`` either creates the folder or fails because it exists, so runs finishing at once never
    share a folder nor fail on one another's."""
    k = 1
    while True:
        candidate = directory / (name if k == 1 else f"{name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            k += 1


def write_results(directory: str | Path, run_name: str, files: dict, config_json: str) -> Path:
    """Write ``files`` (name -> text or bytes) and the resolved ``config.json`` into a new folder
    ``directory/<run_name>`` (earlier runs are kept), then the same files at the top of ``directory`` as
    the latest results. Each file is written atomically and the config last, so a run that fails writes
    nothing and a stale config never sits beside new results (it is removed first). Returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_dir = make_fresh_folder(directory, run_name)
    for folder in (run_dir, directory):
        (folder / CONFIG_FILE).unlink(missing_ok=True)
        for name, content in files.items():
            atomic_write_bytes(folder / name, content.encode("utf-8") if isinstance(content, str) else content)
        atomic_write_bytes(folder / CONFIG_FILE, (config_json + "\n").encode("utf-8"))
    return run_dir
