"""Checkpoints: atomic writes, integrity checks, strict loads, retention and RNG state.

``<workdir>/checkpoints/checkpoint_00001000.pt`` is a ``torch.save``d dict of tensors and plain
containers only, so ``torch.load(weights_only=True)`` reads it. Besides the weights and training state
it holds the run's options (``"options"``: ``RunOptions.to_json``, what later runs read back) and its
resolved config (``"config"``: the record for people). It is written to a temporary file in
the same folder, fsynced and renamed; then its SHA-256 goes into ``checkpoint_00001000.pt.sha256`` the
same way. A checkpoint whose sidecar does not match (a truncated or damaged file), or is missing while
the checkpoints beside it have theirs (a write that never finished), is reported by name and the previous
one is used. Checkpoints copied without their sidecars (none in the folder has one) are loaded with
``weights_only=True`` and a warning that they were not verified; ``write_missing_checksums`` writes the
sidecars. A readable checkpoint whose keys do not match is an error (``ValueError``): loads are strict.

A checkpoint written as a snapshot (kept for good) has a marker file ``checkpoint_00001000.pt.snapshot``
beside it, written before the checkpoint; retention keeps it whatever a later run's ``snapshot_freq``.
A full disk is a ``DiskFullError`` naming the file; the partial file is removed and nothing else changes.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from scoresde.run.distributed import DistContext, all_gather_cat

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2          # 1: before checkpoints stored their options
CHECKPOINT_KEYS = ("format", "step", "model", "ema", "optimizer", "loader", "rng", "meta", "options", "config")
# keys only some runs write: the vlb loss's level sampler (its terms' history), a distilled student's
# objective (its target network or current teacher)
OPTIONAL_CHECKPOINT_KEYS = ("level_sampler", "objective")
UPGRADE_COMMAND = "python -m scoresde.cli.upgrade --workdir <workdir>"
_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")
_TMP_PREFIX = ".tmp-"
_SNAPSHOT_SUFFIX = ".snapshot"
_CHUNK = 1 << 20
_RNG_KEYS = ("torch_cpu", "generator", "numpy_keys", "numpy_extra", "python", "python_extra")


class CorruptCheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: unfinished, truncated or damaged."""


class DiskFullError(OSError):
    """A write that failed for want of disk space; its partial file was removed."""


# ---------------------------------------------------------------------------------------- files
def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"checkpoint_{step:08d}.pt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def snapshot_marker(path: Path) -> Path:
    """``checkpoint_<step>.pt.snapshot``: present when the checkpoint was written as a snapshot."""
    return Path(path).with_name(Path(path).name + _SNAPSHOT_SUFFIX)


def is_snapshot(path: Path) -> bool:
    return snapshot_marker(path).is_file()


def list_checkpoints(directory: Path) -> List[Tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary file next to ``path``, fsync, rename; no partial file survives."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_save(obj, path: Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically, then its SHA-256 sidecar (also atomically). A full
    disk is a ``DiskFullError``: no partial file is left, and a checkpoint whose sidecar could not be
    written is removed too (it would not be trusted beside checksummed ones)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum_path(path).unlink(missing_ok=True)   # never pair a new file with an old checksum
    renamed = False
    try:
        _atomic_write(path, lambda f: torch.save(obj, f))
        renamed = True
        atomic_write_text(checksum_path(path), file_sha256(path) + "\n")
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        if renamed:
            path.unlink(missing_ok=True)
        raise disk_full_error(path, err) from err


def write_checkpoint(state: dict, path: Path, snapshot: bool = False) -> None:
    """``atomic_save(state, path)``; ``snapshot=True`` marks it as one to keep for good (the marker is
    written first, so a snapshot is never left unmarked; a failed write removes a marker it made)."""
    marker = snapshot_marker(path)
    made = snapshot and not marker.is_file()
    try:
        if made:
            mark_snapshot(path)
        atomic_save(state, path)
    except BaseException:
        if made:
            marker.unlink(missing_ok=True)
        raise


def mark_snapshot(path: Path) -> None:
    """Mark ``path`` as a snapshot, kept by every later ``prune_checkpoints``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(snapshot_marker(path), f"{Path(path).name} was written as a snapshot: kept for good\n")


# The forms a failed write takes: ``ENOSPC`` / ``EDQUOT`` from the OS, or from ``torch.save``'s zip
# writer, which reports a short write as ``[enforce fail at inline_container.cc:...] . unexpected pos
# N vs M`` or ``... file write failed``.
_TORCH_WRITE_FAILURES = ("unexpected pos", "file write failed")


def is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and any(form in str(err) for form in _TORCH_WRITE_FAILURES)


def _free_space(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free / 2 ** 20:.1f} MiB free"
    except OSError:
        return "free space unknown"


def disk_full_error(path: Path, err: BaseException) -> DiskFullError:
    """One line: which file, that the disk is full, and what is left intact."""
    path = Path(path)
    earlier = [p for _, p in list_checkpoints(path.parent) if p != path] if _NAME.match(path.name) else []
    intact = (f"the previous checkpoint {earlier[-1]} is intact" if earlier else
              "no earlier file was changed")
    cause = (str(err).strip().splitlines() or [""])[0]       # torch appends a C++ stack trace
    error = DiskFullError(f"cannot write {path}: the disk is full ({_free_space(path.parent)} in {path.parent}; "
                          f"{type(err).__name__}: {cause}). Nothing was lost: the partial file was removed and "
                          f"{intact}. Free some space, then run again")
    error.errno = errno.ENOSPC
    return error


def remove_stale_temp_files(directory: Path) -> List[Path]:
    """Delete leftovers of writes killed before their rename (only one writer per folder)."""
    directory = Path(directory)
    stale = [p for p in directory.glob(_TMP_PREFIX + "*")] if directory.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ---------------------------------------------------------------------------------------- loading
def verify_checksum(path: Path) -> None:
    """Raise ``CorruptCheckpointError`` unless the sidecar exists and matches the file."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        raise CorruptCheckpointError(f"{path}: no checksum file {sidecar.name} (the write did not finish)")
    expected = sidecar.read_text().strip()
    actual = file_sha256(path)
    if actual != expected:
        raise CorruptCheckpointError(f"{path}: SHA-256 {actual[:12]}... does not match {sidecar.name} "
                                     f"({expected[:12]}...): the file is truncated or damaged")


def check_keys(state: dict, expected, what: str) -> None:
    """Strict key check: ``ValueError`` listing missing and unexpected keys."""
    if not isinstance(state, dict):
        raise ValueError(f"{what}: expected a dict, got {type(state).__name__}")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing}, unexpected keys {unexpected}")


def checksum_expected(path: Path) -> bool:
    """Whether ``path`` must have a sidecar: it has one, or a checkpoint beside it has one (then a
    missing sidecar is a write that did not finish). A folder with none was copied without them."""
    path = Path(path)
    return checksum_path(path).is_file() or any(checksum_path(p).is_file() for _, p in list_checkpoints(path.parent))


def read_checkpoint(path: Path) -> dict:
    """Verify (where a checksum is expected, see ``checksum_expected``) and load one checkpoint on the
    CPU (``weights_only=True``); keys checked strictly."""
    path = Path(path)
    verified = checksum_expected(path)
    if verified:
        verify_checksum(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CorruptCheckpointError(f"{path}: cannot be read: {err}") from err
    if not verified:
        logger.warning("%s: not verified: it has no checksum file %s (copied without it?); loaded with "
                       "weights_only=True. scoresde.run.checkpoint.write_missing_checksums(%r) writes them",
                       path, checksum_path(path).name, str(path.parent))
    if isinstance(state, dict) and state.get("format") == 1 and "options" not in state:
        raise ValueError(f"{path} was written before checkpoints stored their options (format 1); add them "
                         f"with {UPGRADE_COMMAND}")
    check_keys({k: v for k, v in state.items() if k not in OPTIONAL_CHECKPOINT_KEYS} if isinstance(state, dict)
               else state, CHECKPOINT_KEYS, str(path))
    if state["format"] != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state['format']!r}, this code reads {FORMAT_VERSION}")
    return state


def write_missing_checksums(directory: Path) -> List[Path]:
    """Write the missing ``.sha256`` sidecars of the readable checkpoints in ``directory`` (e.g. after
    copying the checkpoints without them); returns the sidecars written. An unreadable checkpoint gets
    none (``CorruptCheckpointError``)."""
    written = []
    for _, path in list_checkpoints(directory):
        sidecar = checksum_path(path)
        if sidecar.is_file():
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise CorruptCheckpointError(f"{path}: cannot be read, so no checksum was written for it: {err}") from err
        atomic_write_text(sidecar, file_sha256(path) + "\n")
        written.append(sidecar)
    return written


def _read_if_present(path: Path) -> dict | None:
    """``read_checkpoint(path)``, or ``None`` if the file went away meanwhile (pruned by a trainer
    running beside this reader: eval and sample take no lock)."""
    try:
        return read_checkpoint(path)
    except (CorruptCheckpointError, FileNotFoundError):
        if not path.exists():
            return None
        raise


def load_latest(directory: Path, attempts: int = 5) -> Tuple[dict, Path] | None:
    """The newest readable checkpoint in ``directory`` and its path; ``None`` if there is none.

    Unreadable ones are logged (a warning naming the file) and skipped; if every checkpoint is
    unreadable this raises rather than silently starting over. A checkpoint that disappears while it
    is read (a running trainer pruned it) sends the search back to a fresh listing.
    """
    for _ in range(attempts):
        found, vanished = list_checkpoints(directory), False
        for _, path in reversed(found):
            try:
                state = _read_if_present(path)
            except CorruptCheckpointError as err:
                logger.warning("skipping corrupted checkpoint %s: %s; trying the previous one", path, err)
                continue
            if state is None:
                vanished = True
                break
            return state, path
        if not vanished:
            break
    else:
        raise RuntimeError(f"checkpoints in {directory} kept disappearing while being read ({attempts} tries)")
    if found:
        raise RuntimeError(f"no readable checkpoint in {directory}: all of "
                           f"{[p.name for _, p in found]} are corrupted")
    return None


# ---------------------------------------------------------------------------------------- retention
def steps_to_keep(steps, keep_last: int, snapshot_freq: int = 0, snapshots=()) -> set:
    """The newest ``keep_last`` steps, the ``snapshots`` (steps written as snapshots) and every multiple
    of ``snapshot_freq`` (0: none), all kept for good."""
    steps = sorted(steps)
    newest = set(steps[-keep_last:]) if keep_last > 0 else set()
    multiples = {s for s in steps if snapshot_freq > 0 and s % snapshot_freq == 0}
    return newest | multiples | (set(snapshots) & set(steps))


def prune_checkpoints(directory: Path, keep_last: int, snapshot_freq: int = 0) -> List[Path]:
    """Delete checkpoints (and sidecars) that ``steps_to_keep`` does not keep; returns them.

    Snapshots are the checkpoints marked as such (``write_checkpoint(..., snapshot=True)``), whatever
    ``snapshot_freq`` says now. A caller that writes and then prunes with its ``snapshot_freq`` has the
    newest checkpoint marked when it is a multiple of it (it was written as a snapshot); older unmarked
    multiples (written before snapshots were marked) are kept too.
    """
    found = list_checkpoints(directory)
    if found and snapshot_freq > 0 and found[-1][0] % snapshot_freq == 0 and not is_snapshot(found[-1][1]):
        mark_snapshot(found[-1][1])
    snapshots = [s for s, p in found if is_snapshot(p)]
    keep = steps_to_keep([s for s, _ in found], keep_last, snapshot_freq, snapshots)
    removed = [p for s, p in found if s not in keep]
    for p in removed:
        checksum_path(p).unlink(missing_ok=True)
        p.unlink(missing_ok=True)
    _remove_orphan_markers(directory)
    return removed


def _remove_orphan_markers(directory: Path) -> None:
    """Snapshot markers whose checkpoint is gone (a write that failed after its marker)."""
    for marker in Path(directory).glob("checkpoint_*.pt" + _SNAPSHOT_SUFFIX):
        if not marker.with_name(marker.name[: -len(_SNAPSHOT_SUFFIX)]).exists():
            marker.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------- RNG
def rng_state(generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Every RNG this process uses, as tensors: torch CPU, the current CUDA device, the training
    generator, NumPy's and Python's global generators."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch_cpu": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
        "python": torch.tensor(internal, dtype=torch.int64),
        "python_extra": torch.tensor([version, float("nan") if gauss_next is None else gauss_next],
                                     dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Inverse of ``rng_state``. Keys are checked strictly; a CUDA state is restored when there is
    both a saved one and a CUDA device (a CPU checkpoint resumed on a GPU keeps the fresh CUDA RNG)."""
    check_keys({k: v for k, v in state.items() if k != "cuda"}, _RNG_KEYS, "rng state")
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["generator"])
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, gauss_next = state["python_extra"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), None if math.isnan(gauss_next) else gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states(state: Dict[str, torch.Tensor], ctx: DistContext) -> List[Dict[str, torch.Tensor]]:
    """Every rank's ``rng_state`` in rank order (each rank draws its own noise, so each is saved)."""
    if not ctx.distributed:
        return [state]
    chunks = {k: all_gather_cat(v.to(ctx.device), ctx).cpu().chunk(ctx.world_size) for k, v in state.items()}
    return [{k: chunks[k][r].clone() for k in state} for r in range(ctx.world_size)]


def _some(names: list, k: int = 3) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names)} in all)" if len(names) > k else "")


def state_mismatch(expected: dict, given: dict) -> str:
    """One line: how many names are missing, unexpected or of another shape, with the first few."""
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    shapes = [f"{name} {tuple(given[name].shape)} vs {tuple(expected[name].shape)}" for name in expected
              if name in given and tuple(given[name].shape) != tuple(expected[name].shape)]
    parts = [f"{len(missing)} missing ({_some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({_some(unexpected)})" if unexpected else "",
             f"{len(shapes)} of another shape ({_some(shapes)})" if shapes else ""]
    return "; ".join(p for p in parts if p)


def load_module_state(module: torch.nn.Module, state_dict: dict, path: Path) -> None:
    """``module.load_state_dict(strict=True)``; a mismatch is a one-line ``ValueError`` naming the
    checkpoint and the first few parameters that do not fit."""
    mismatch = state_mismatch(module.state_dict(), state_dict)
    if mismatch:
        raise ValueError(f"{path}: the weights do not match the network built from the config (strict load): "
                         f"{mismatch}")
    module.load_state_dict(state_dict, strict=True)
