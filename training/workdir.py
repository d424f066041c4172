"""Where a run keeps its files, relative to its work directory. Every mode reads the names from here.

    <workdir>/.lock                      held by the running trainer (``WorkdirLock``)
    <workdir>/config.json                resolved config of the last ``train``
    <workdir>/checkpoints/checkpoint_<step>.pt (+ .sha256)
    <workdir>/metrics.jsonl              training metrics, one JSON object per line
    <workdir>/snapshots/samples_<step>.npz / .png
    <workdir>/tensorboard/
    <workdir>/eval/metrics.json, config.json
    <workdir>/samples/samples.npz / .png, info.json, config.json
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from training.checkpoint import atomic_write_bytes

CHECKPOINT_DIR = "checkpoints"
SNAPSHOT_DIR = "snapshots"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
SAMPLES_DIR = "samples"
METRICS_FILE = "metrics.jsonl"
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


class NonFiniteResultsError(RuntimeError):
    """Some likelihoods or samples came out NaN or inf; the results were written with their count."""


def write_results(directory: str | Path, files: dict, config_json: str) -> None:
    """Write ``files`` (name -> text or bytes) into ``directory``, each atomically, then the resolved
    ``config.json`` last: a run that fails writes nothing, and a stale config never sits beside new
    results (it is removed first)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).unlink(missing_ok=True)
    for name, content in files.items():
        atomic_write_bytes(directory / name, content.encode("utf-8") if isinstance(content, str) else content)
    atomic_write_bytes(directory / CONFIG_FILE, (config_json + "\n").encode("utf-8"))
