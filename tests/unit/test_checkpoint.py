"""Checkpoint files: atomic writes, integrity checks, strict loads, retention, RNG state."""
import logging
import os
import random

import numpy as np
import pytest
import torch

from scoresde.run import checkpoint as ckpt


def _state(step: int, value: float = 0.0) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "step": step, "model": {"w": torch.full((64, 64), value)},
            "ema": {}, "optimizer": {}, "loader": {"epoch": 0, "position": step}, "rng": {},
            "meta": {"dataset": "gmm"}, "options": "{}", "config": "{}"}


def _write(directory, step: int, value: float = 0.0):
    path = ckpt.checkpoint_path(directory, step)
    ckpt.atomic_save(_state(step, value), path)
    return path


def test_roundtrip_with_weights_only_load_and_sidecar(tmp_path):
    path = _write(tmp_path, 100, 1.5)
    assert path.name == "checkpoint_00000100.pt"
    assert ckpt.checksum_path(path).read_text().strip() == ckpt.file_sha256(path)
    plain = torch.load(path, weights_only=True)            # readable without our code
    assert torch.equal(plain["model"]["w"], torch.full((64, 64), 1.5))
    state = ckpt.read_checkpoint(path)
    assert state["step"] == 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    good = _write(tmp_path, 100)
    before = sorted(p.name for p in tmp_path.iterdir())

    def failing_save(obj, f):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        _write(tmp_path, 200)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == before      # no temp file, no checkpoint_200
    state, path = ckpt.load_latest(tmp_path)
    assert path == good and state["step"] == 100


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_sidecar(path):
    ckpt.checksum_path(path).unlink()


@pytest.mark.parametrize("damage", [_truncate, _flip_middle_byte, _drop_sidecar])
def test_corrupted_newest_is_reported_and_previous_used(tmp_path, caplog, damage):
    _write(tmp_path, 100, 1.0)
    newest = _write(tmp_path, 200, 2.0)
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="scoresde.run.checkpoint"):
        state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 100 and path.name == "checkpoint_00000100.pt"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(newest.name in m for m in warnings), warnings


def test_all_corrupted_raises_instead_of_starting_over(tmp_path):
    _truncate(_write(tmp_path, 100))
    with pytest.raises(RuntimeError, match="corrupted"):
        ckpt.load_latest(tmp_path)
    assert ckpt.load_latest(tmp_path / "empty") is None


@pytest.mark.parametrize("stage", ["before the read", "between checksum and load"])
def test_a_checkpoint_pruned_while_being_read_is_skipped_quietly(tmp_path, monkeypatch, caplog, stage):
    """Eval beside a trainer: the newest checkpoint is pruned after the listing; the reader goes on to
    the next one without calling anything corrupted."""
    _write(tmp_path, 100)
    newest = _write(tmp_path, 200)
    original = ckpt.verify_checksum if stage == "between checksum and load" else ckpt.read_checkpoint

    def prune_then_read(path):
        if path == newest and newest.exists():
            if stage == "between checksum and load":
                original(path)                      # the checksum still matched ...
            ckpt.checksum_path(newest).unlink()     # ... then the trainer pruned it (sidecar first)
            newest.unlink()
            if stage == "between checksum and load":
                return None
        return original(path)

    monkeypatch.setattr(ckpt, "verify_checksum" if stage == "between checksum and load" else "read_checkpoint",
                        prune_then_read)
    with caplog.at_level(logging.WARNING):
        state, path = ckpt.load_latest(tmp_path)
    assert state["step"] == 100 and path.name == "checkpoint_00000100.pt"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_strict_keys(tmp_path):
    state = _state(5)
    state["surprise"] = 1
    path = ckpt.checkpoint_path(tmp_path, 5)
    ckpt.atomic_save(state, path)
    with pytest.raises(ValueError, match="unexpected keys \\['surprise'\\]"):
        ckpt.read_checkpoint(path)
    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="strict"):
        ckpt.load_module_state(net, {"weight": torch.zeros(2, 2), "bogus": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="strict"):
        ckpt.load_module_state(net, {"weight": torch.zeros(2, 2)}, path)


def test_a_checkpoint_without_options_is_one_line_saying_how_to_upgrade(tmp_path):
    state = _state(5)
    del state["options"]
    path = ckpt.checkpoint_path(tmp_path, 5)
    ckpt.atomic_save({**state, "format": 1}, path)
    with pytest.raises(ValueError, match=r"before checkpoints stored their options.*python -m scoresde\.cli\.upgrade"):
        ckpt.read_checkpoint(path)


def test_retention_keeps_last_and_snapshots(tmp_path):
    assert ckpt.steps_to_keep(range(100, 1100, 100), keep_last=3, snapshot_freq=500) == {500, 800, 900, 1000}
    for step in range(100, 1100, 100):
        _write(tmp_path, step)
    removed = ckpt.prune_checkpoints(tmp_path, keep_last=2, snapshot_freq=400)
    assert {p.name for p in removed} == {f"checkpoint_{s:08d}.pt" for s in (100, 200, 300, 500, 600, 700)}
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [400, 800, 900, 1000]
    assert len(list(tmp_path.glob("*.sha256"))) == 4


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".tmp-checkpoint_00000100.pt.abc").write_bytes(b"junk")
    assert len(ckpt.remove_stale_temp_files(tmp_path)) == 1
    assert not list(tmp_path.iterdir())


def test_rng_state_roundtrip_through_a_file(tmp_path):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(3)
    path = tmp_path / "rng.pt"
    ckpt.atomic_save(ckpt.rng_state(gen), path)
    expected = (torch.rand(4, generator=gen), torch.rand(4), np.random.rand(), random.random())
    ckpt.set_rng_state(torch.load(path, weights_only=True), gen)
    got = (torch.rand(4, generator=gen), torch.rand(4), np.random.rand(), random.random())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_new_files_follow_the_umask(tmp_path):
    path = _write(tmp_path, 1)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
