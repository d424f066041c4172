"""Bad input and bad luck at the library level: each test reproduces a fault (a wrong-shaped score, a
later run's settings, two runs finishing at once, a full disk, a checkpoint copied without its checksum,
a mask holding other values, a missing data file, a second Ctrl-C) and checks what the user is told and
that nothing good is lost."""
import errno
import logging
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
import torch

from scoresde import sde_lib
from scoresde.data.datasets import load_cifar10, load_mnist
from scoresde.run import checkpoint as ckpt
from scoresde.run import workdir as wd
from scoresde.run.runtime import GracefulStop
from scoresde.samplers import classifier_free_guidance, inpaint
from scoresde.samplers.inpaint import check_mask

LABELLED = sde_lib.labelled.three_class_mixture()


# ---------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("scale", [-1.0, 0.5, 2.5])
@pytest.mark.parametrize("which", ["score_uncond", "score_cond"])
@pytest.mark.parametrize("cut", [lambda s: s[:, :1], lambda s: s[:1]], ids=["(B, 1)", "(1, D)"])
def test_classifier_free_guidance_refuses_a_score_that_would_broadcast(scale, which, cut):
    """A score of shape (B, 1) or (1, D) broadcasts against the other into a (B, D) result. (Scales 0
    and 1 return one of the two score functions itself: nothing is combined.)"""
    sde = sde_lib.VPSDE()
    x, y = LABELLED.sample_labelled(16, generator=torch.Generator().manual_seed(0))
    t = torch.full((16,), 0.3)
    scores = {"score_uncond": LABELLED.shared_score_fn(sde), "score_cond": LABELLED.conditional_score_fn(sde, y)}
    right = scores[which]
    scores[which] = lambda x, t: cut(right(x, t))
    guided = classifier_free_guidance(scores["score_uncond"], scores["score_cond"], scale)
    bad = tuple(cut(right(x, t)).shape)
    with pytest.raises(ValueError) as info:
        guided(x, t)
    message = str(info.value)
    assert which in message and "(16, 2)" in message and str(bad) in message, message


# ---------------------------------------------------------------------------------------- retention
def _state(step: int) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "step": step, "model": {"w": torch.full((4,), float(step))},
            "ema": {}, "optimizer": {}, "loader": {}, "rng": {}, "meta": {}, "options": "{}", "config": "{}"}


def _steps(directory) -> list:
    return [s for s, _ in ckpt.list_checkpoints(directory)]


def test_a_snapshot_written_as_one_stays_one_whatever_a_later_prune_says(tmp_path):
    """The writer marks snapshots; a later run that does not repeat snapshot_freq (the default is 50 000)
    keeps them, also in a copy of the folder."""
    for step in range(100, 1100, 100):
        ckpt.write_checkpoint(_state(step), ckpt.checkpoint_path(tmp_path, step), snapshot=step % 400 == 0)
    copy = tmp_path.parent / "copy"
    shutil.copytree(tmp_path, copy)
    for folder in (tmp_path, copy):
        ckpt.prune_checkpoints(folder, keep_last=2, snapshot_freq=50_000)
        assert _steps(folder) == [400, 800, 900, 1000]
        ckpt.prune_checkpoints(folder, keep_last=1)
        assert _steps(folder) == [400, 800, 1000]
        assert ckpt.is_snapshot(ckpt.checkpoint_path(folder, 400)) and not ckpt.is_snapshot(
            ckpt.checkpoint_path(folder, 1000))
    state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 1000


def test_extending_a_run_without_repeating_snapshot_freq_keeps_its_snapshots(tmp_path):
    """The trainer's calls as they are: save, then prune with the run's snapshot_freq. The first run
    (snapshot_freq=4) is extended by one that leaves snapshot_freq at its default."""
    def run(steps, snapshot_freq):
        for step in steps:
            ckpt.atomic_save(_state(step), ckpt.checkpoint_path(tmp_path, step))
            ckpt.prune_checkpoints(tmp_path, keep_last=2, snapshot_freq=snapshot_freq)

    run(range(2, 11, 2), snapshot_freq=4)
    assert _steps(tmp_path) == [4, 8, 10]
    run(range(12, 21, 2), snapshot_freq=50_000)
    assert _steps(tmp_path) == [4, 8, 18, 20]


# ---------------------------------------------------------------------------------------- results folders
def test_results_folder_is_created_atomically_when_another_run_takes_the_name(tmp_path, monkeypatch):
    """Another run creates ``step8`` (and ``step8-2``) between this run's look and its mkdir."""
    taken = ["step8", "step8-2"]
    real_mkdir = Path.mkdir

    def mkdir_after_the_other_run(self, *args, **kwargs):
        if self.parent == tmp_path and taken:
            real_mkdir(tmp_path / taken.pop(0))            # the other run got there first
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_after_the_other_run)
    run_dir = wd.write_results(tmp_path, "step8", {"metrics.json": "{}\n"}, "{}")
    assert run_dir.name == "step8-3" and (run_dir / "metrics.json").is_file()


def test_concurrent_finished_runs_each_get_their_own_results_folder(tmp_path):
    n = 8
    barrier, folders, errors = threading.Barrier(n), [], []

    def finish(k):
        barrier.wait()
        try:
            folders.append(wd.write_results(tmp_path, "step8", {"metrics.json": f"{k}\n"}, "{}"))
        except Exception as err:      # noqa: BLE001 -- collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=finish, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len({f.name for f in folders}) == n
    assert sorted(int((f / "metrics.json").read_text()) for f in folders) == list(range(n))


# ---------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4608 vs 4506"),
    RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                 "data/0: file write failed"),
], ids=["ENOSPC", "unexpected pos", "file write failed"])
def test_a_full_disk_is_named_and_nothing_is_lost(tmp_path, monkeypatch, failure):
    previous = ckpt.checkpoint_path(tmp_path, 100)
    ckpt.atomic_save(_state(100), previous)
    before = sorted(p.name for p in tmp_path.iterdir())

    def disk_full(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    target = ckpt.checkpoint_path(tmp_path, 200)
    with pytest.raises(ckpt.DiskFullError) as info:
        ckpt.atomic_save(_state(200), target)
    monkeypatch.undo()
    message = str(info.value)
    assert "disk is full" in message and str(target) in message
    assert "nothing was lost" in message.lower() and previous.name in message and "intact" in message
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # no temp file, no checkpoint_200
    assert ckpt.load_latest(tmp_path)[1] == previous


def test_a_full_disk_while_writing_the_checksum_removes_the_new_checkpoint(tmp_path, monkeypatch):
    previous = ckpt.checkpoint_path(tmp_path, 100)
    ckpt.atomic_save(_state(100), previous)
    before = sorted(p.name for p in tmp_path.iterdir())

    def no_space(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write_text", no_space)
    with pytest.raises(ckpt.DiskFullError, match="checkpoint_00000100.pt .*intact"):
        ckpt.atomic_save(_state(200), ckpt.checkpoint_path(tmp_path, 200))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------- checksums
def test_checkpoints_copied_without_checksums_load_unverified(tmp_path, caplog):
    for step in (100, 200):
        ckpt.atomic_save(_state(step), ckpt.checkpoint_path(tmp_path, step))
    for sidecar in tmp_path.glob("*.sha256"):
        sidecar.unlink()
    with caplog.at_level(logging.INFO, logger="scoresde.run.checkpoint"):
        state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 200 and path.name == "checkpoint_00000200.pt"
    lines = [r.getMessage() for r in caplog.records]
    assert any("not verified" in m and path.name in m for m in lines), lines
    assert not any("corrupt" in m for m in lines), lines
    assert ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path, 100))["step"] == 100


def test_write_missing_checksums_then_verify(tmp_path):
    for step in (100, 200):
        ckpt.atomic_save(_state(step), ckpt.checkpoint_path(tmp_path, step))
    ckpt.checksum_path(ckpt.checkpoint_path(tmp_path, 100)).unlink()
    written = ckpt.write_missing_checksums(tmp_path)
    assert [p.name for p in written] == ["checkpoint_00000100.pt.sha256"]
    ckpt.verify_checksum(ckpt.checkpoint_path(tmp_path, 100))
    assert ckpt.write_missing_checksums(tmp_path) == []


def test_a_damaged_copy_without_checksum_is_still_reported(tmp_path):
    path = ckpt.checkpoint_path(tmp_path, 100)
    ckpt.atomic_save(_state(100), path)
    ckpt.checksum_path(path).unlink()
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RuntimeError, match="corrupted"):
        ckpt.load_latest(tmp_path)


# ---------------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("value, named", [(0.5, "0.5"), (float("nan"), "nan"), (2.0, "2")])
def test_a_bad_mask_names_its_bad_values(value, named):
    x_known = torch.zeros(2, 1, 8, 8)
    mask = torch.ones(1, 8, 8)
    mask[0, 3, 4] = value
    mask[0, 5, 5] = value
    with pytest.raises(ValueError) as info:
        check_mask(mask[None], x_known)
    message = str(info.value)
    assert named in message and "2 entries" in message and "0 (missing) and 1 (known)" in message
    assert "shape" not in message


def test_inpaint_names_the_bad_mask_values():
    sde = sde_lib.VPSDE(N=50)
    mask = torch.tensor([[1.0, -1.0]])
    with pytest.raises(ValueError, match=r"mask must hold only 0 \(missing\) and 1 \(known\).*-1"):
        inpaint(sde, lambda x, t: -x, torch.zeros(1, 2), mask)


# ---------------------------------------------------------------------------------------- data
def test_missing_cifar_names_every_file_training_needs(tmp_path):
    """Training reads the test split first (held-out loss); the message must not stop at test_batch."""
    for split in ("test", "train"):
        with pytest.raises(FileNotFoundError) as info:
            load_cifar10(tmp_path, split)
        message = str(info.value)
        for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
            assert name in message, (split, message)
        assert "cs.toronto.edu/~kriz/cifar.html" in message


def test_missing_cifar_names_only_what_is_missing(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(b"")
    (folder / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path, "train")
    message = str(info.value)
    assert "data_batch_2" in message and "data_batch_5" in message
    assert "missing" in message and "'data_batch_1'" not in message.split("missing", 1)[1].split(";")[0]


def test_missing_mnist_names_every_file_training_needs(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, "test")
    for name in ("t10k-images-idx3-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        assert name in str(info.value)


# ---------------------------------------------------------------------------------------- signals
def test_a_second_sigint_exits_130_naming_the_last_complete_checkpoint(tmp_path, capsys):
    for step in (100, 200):
        ckpt.atomic_save(_state(step), ckpt.checkpoint_path(tmp_path, step))
    ckpt.atomic_save(_state(300), ckpt.checkpoint_path(tmp_path, 300))
    ckpt.checksum_path(ckpt.checkpoint_path(tmp_path, 300)).unlink()      # its write was cut short
    with pytest.raises(SystemExit) as info:
        with GracefulStop(checkpoint_dir=tmp_path) as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)                           # while writing the checkpoint
            for _ in range(1000):                                          # the handler runs between bytecodes
                pass
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted again" in err[0]
    assert str(ckpt.checkpoint_path(tmp_path, 200)) in err[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # handlers restored
