"""Bad input and bad luck on the command line, in process: a later run that leaves snapshot_freq out, a
full disk, checkpoints copied without their checksums, a one-level process, missing CIFAR-10 files and
a second Ctrl-C. Each test reproduces the fault for real and checks what the user sees."""
import errno
import logging
import os
import signal
import sys

import pytest
import torch

from scoresde.cli import main
from scoresde.cli.factory import options_from_config
from scoresde.configs.cifar10.ddpmpp_vp import get_config as cifar_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer

SMALL = ["--config.data.num_train=512", "--config.training.batch_size=64", "--config.model.hidden=16",
         "--config.model.n_blocks=1", "--config.training.progress_bar=False", "--config.training.tensorboard=False",
         "--config.training.n_iters=4", "--config.training.log_freq=2", "--config.training.eval_freq=1000",
         "--config.training.snapshot_sampling=False"]


def tiny_config(n_iters: int = 8):
    config = gmm_config()
    config.data.num_train = 512
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 64, n_iters, 2, 1000
    t.checkpoint_freq, t.snapshot_freq, t.keep_last, t.snapshot_sampling = 2, 1000, 2, False
    t.progress_bar, t.tensorboard = False, False
    config.model.hidden, config.model.n_blocks, config.model.num_scales = 16, 1, 50
    config.optim.warmup = 2
    s = config.sampling
    s.method, s.steps, s.num_samples, s.batch_size = "fast", 5, 16, 16
    return config


def _steps(workdir):
    return [s for s, _ in ckpt.list_checkpoints(workdir / "checkpoints")]


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------- retention
def test_extending_a_run_without_repeating_snapshot_freq_keeps_its_snapshots(tmp_path):
    config = tiny_config(n_iters=10)
    config.training.snapshot_freq = 4
    main.run(config, tmp_path, "train")
    assert _steps(tmp_path) == [4, 8, 10]
    longer = tiny_config(n_iters=16)                          # snapshot_freq left at the config's 1000
    main.run(longer, tmp_path, "train")
    assert _steps(tmp_path) == [4, 8, 14, 16]


# ---------------------------------------------------------------------------------------- full disk
def test_a_full_disk_while_training_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch, capsys):
    real_save = torch.save

    def fills_the_disk_at_step_4(obj, f):
        if isinstance(obj, dict) and obj.get("step") == 4:
            f.write(b"PK\x03\x04 partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4608 vs 4506\n"
                               "frame #0: c10::ThrowEnforceNotMet(...)")
        return real_save(obj, f)

    monkeypatch.setattr(ckpt.torch, "save", fills_the_disk_at_step_4)
    assert main.execute(options_from_config(tiny_config()), str(tmp_path), "train") == 1
    line = _last_line(capsys.readouterr().err)
    assert "the disk is full" in line and "checkpoint_00000004.pt" in line and "DiskFullError" in line
    assert "checkpoint_00000002.pt is intact" in line
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint_00000002.pt", "checkpoint_00000002.pt.sha256"]
    monkeypatch.undo()
    assert main.run(tiny_config(n_iters=4), tmp_path, "train")["step"] == 4       # resumes from step 2


# ---------------------------------------------------------------------------------------- checksums
def test_checkpoints_copied_without_checksums_are_sampled_from(tmp_path, caplog):
    main.run(tiny_config(n_iters=4), tmp_path, "train")
    for sidecar in (tmp_path / "checkpoints").glob("*.sha256"):
        sidecar.unlink()
    with caplog.at_level(logging.WARNING):
        main.run(tiny_config(n_iters=4), tmp_path, "sample")
    assert (tmp_path / "samples" / "samples.npz").is_file()
    assert any("not verified" in r.getMessage() and "checkpoint_00000004.pt" in r.getMessage()
               for r in caplog.records)


# ---------------------------------------------------------------------------------------- validation
def test_one_noise_level_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    argv = ["main.py", "--config", "configs/toy/gmm_vp.py", f"--workdir={tmp_path}", "--mode=train",
            "--config.model.num_scales=1", *SMALL]
    monkeypatch.setattr(sys, "argv", argv)          # config_flags reads the overrides from sys.argv
    main.parse_flags(argv)
    with pytest.raises(SystemExit) as info:
        main.main(["main.py"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.model.num_scales must be an integer >= 21" in err[0] and "got 1" in err[0]
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------- data
def test_missing_cifar_names_the_training_batches_too(tmp_path, capsys):
    config = cifar_config()
    config.data.root = str(tmp_path)
    assert main.execute(options_from_config(config), str(tmp_path / "run"), "train") == 1
    line = _last_line(capsys.readouterr().err)
    assert "FileNotFoundError" in line and "test_batch" in line
    assert all(f"data_batch_{i}" in line.split("that folder must hold")[0] for i in range(1, 6)), line


# ---------------------------------------------------------------------------------------- signals
def test_a_second_ctrl_c_while_checkpointing_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    """The first SIGINT asks for a checkpoint at the step boundary; the second comes while it is written."""
    main.run(tiny_config(n_iters=2), tmp_path, "train")                         # checkpoint_00000002.pt
    real_step, real_save = trainer.train_step, torch.save

    def step_then_ctrl_c(run, x, labels=None):
        loss = real_step(run, x, labels)
        if run.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    def ctrl_c_again_while_writing(obj, f):
        f.write(b"PK\x03\x04 partial")
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, f)

    monkeypatch.setattr(trainer, "train_step", step_then_ctrl_c)
    monkeypatch.setattr(ckpt.torch, "save", ctrl_c_again_while_writing)
    try:
        with pytest.raises(SystemExit) as info:
            main.execute(options_from_config(tiny_config(n_iters=20)), str(tmp_path), "train")
    except KeyboardInterrupt:
        pytest.fail("the second SIGINT escaped as a raw KeyboardInterrupt (a traceback on the terminal)")
    monkeypatch.undo()
    assert info.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted again" in err[0] and "checkpoint" in err[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler         # handlers restored
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))                  # the partial write is gone
    state, path = ckpt.load_latest(tmp_path / "checkpoints")
    assert state["step"] == 2 and path.name == "checkpoint_00000002.pt"
