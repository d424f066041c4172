"""Guards that depend on how a model was trained or on what a work directory holds: the data given to
inpaint / colorize must be in the data set's data space; label-dropout checks read the options stored
with the weights, not the requested ones; a refused or failed training run changes no file of its work
directory; the recipe fields a divergence asks to change may change on resume; a score_sde config of
an unknown suffix is a one-line error. Each test reproduces the fault through the command line's
in-process entry points (``main.run`` / ``main.execute``) on tiny models."""
import copy
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from scoresde.cli import main
from scoresde.cli.factory import options_from_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.run import checkpoint as ckpt
from scoresde.run.workdir import WorkdirBusyError, WorkdirLock
from scoresde.train import loop as trainer
from test_conditional_training import cond_tiny
from test_faults import _nan_data_from, tiny_config


def _error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def _files(workdir: Path) -> dict:
    """Every file under ``workdir`` (but the lock, which a refused trainer may take) and its bytes."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# ---------------------------------------------------------------------------------------- inpaint data
def tiny_digits(n_iters: int = 2):
    config = digits_config()
    config.device = "cpu"
    config.data.num_train = 64
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq, t.checkpoint_freq = 16, n_iters, 2, 2, n_iters
    t.snapshot_freq, t.snapshot_sampling, t.progress_bar, t.tensorboard = 10**6, False, False, False
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_scales = 8, (1,), 1, (), 50
    config.eval.num_samples = config.eval.batch_size = 8
    s = config.sampling
    s.method, s.steps, s.num_samples, s.batch_size, s.mask = "fast", 3, 4, 4, "lower_half"
    s.corrector = "none"
    return config


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits")
    config = tiny_digits()
    main.run(config, workdir, "train")
    return config, workdir


def _inpaint_from(config, workdir: Path, items: np.ndarray, tmp_path: Path, mode: str = "inpaint"):
    path = tmp_path / f"items_{items.dtype}.npz"
    np.savez(path, samples=items)
    config = copy.deepcopy(config)
    config.sampling.inpaint_data = str(path)
    return main.execute(options_from_config(config), str(workdir), mode, str(tmp_path / f"out_{items.dtype}"))


def test_inpaint_data_outside_the_data_space_is_refused(digits_model, tmp_path, capsys):
    config, workdir = digits_model
    levels = np.random.default_rng(0).integers(0, 17, size=(4, 1, 8, 8))
    assert _inpaint_from(config, workdir, levels.astype(np.float32), tmp_path) == 1     # grey levels 0..16
    line = _error_line(capsys)
    assert "sampling.inpaint_data" in line and "[0, 1]" in line and "16" in line, line
    assert _inpaint_from(config, workdir, (levels * 15).astype(np.uint8), tmp_path) == 1   # uint8 0..255
    line = _error_line(capsys)
    assert "uint8" in line and "floating" in line, line
    assert not (tmp_path / "out_uint8").exists() and not (tmp_path / "out_float32").exists()
    good = (levels + 0.5).astype(np.float32) / 17                                      # data space
    (tmp_path / "ok").mkdir()
    assert _inpaint_from(config, workdir, good, tmp_path / "ok") == 0
    npz = np.load(tmp_path / "ok" / "out_float32" / "inpaint.npz")
    known = npz["mask"]
    assert np.array_equal(npz["completed"][known], good[known])          # the known entries come back exactly


def test_colorize_data_must_be_floats_in_the_unit_interval(tmp_path, capsys):
    from scoresde.configs.cifar10.ddpmpp_vp import get_config as cifar_config
    from unit.test_datasets import write_cifar

    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n_per_batch=8)
    config = cifar_config()
    config.device, config.data.root = "cpu", str(tmp_path / "data")
    t = config.training
    t.batch_size, t.n_iters, t.snapshot_sampling, t.progress_bar, t.tensorboard = 8, 1, False, False, False
    t.checkpoint_freq = t.eval_freq = 1
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 8, (1,), 1
    config.model.attn_resolutions, config.model.num_scales = (), 50
    config.eval.num_samples = config.eval.batch_size = 4
    config.sampling.num_samples, config.sampling.batch_size, config.sampling.corrector = 2, 2, "none"
    main.run(config, tmp_path / "run", "train")
    items = np.random.default_rng(0).integers(0, 256, size=(2, 3, 32, 32)).astype(np.uint8)
    assert _inpaint_from(config, tmp_path / "run", items, tmp_path, mode="colorize") == 1
    line = _error_line(capsys)
    assert "uint8" in line and "[0, 1]" in line, line


# ---------------------------------------------------------------------------------------- label dropout
def test_label_dropout_guards_read_the_trained_options(tmp_path):
    """Trained without label dropout, asked with a config that has it: the null label was never trained,
    so classifier-free guidance and eval (the score of p(x)) are refused; a plain class-conditional
    sample still runs."""
    workdir = tmp_path / "run"
    trainer.train(options_from_config(cond_tiny(dropout=0.0)), workdir)
    config = cond_tiny(dropout=0.5)
    config.sampling.label, config.sampling.guidance, config.sampling.guidance_scale = "3", "cfg", 2.0
    with pytest.raises(ValueError, match="without label dropout"):
        main.run(config, workdir, "sample", outdir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="without label dropout"):
        main.run(config, workdir, "eval", outdir=tmp_path / "e")
    config.sampling.guidance = "none"
    assert main.run(config, workdir, "sample", outdir=tmp_path / "s3")["label"] == 3


# ---------------------------------------------------------------------------------------- refused runs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    main.run(tiny_config(), workdir, "train")
    return workdir


def test_a_refused_resume_changes_no_file(trained):
    before = _files(trained)
    config = tiny_config(training__n_iters=12)
    config.optim.beta1 = 0.5
    with pytest.raises(ValueError, match=r"optim\.beta1: checkpoint 0\.9, requested 0\.5"):
        main.run(config, trained, "train")
    assert _files(trained) == before


def test_a_trainer_refused_by_the_lock_changes_no_file(trained):
    before = _files(trained)
    with WorkdirLock(trained):
        with pytest.raises(WorkdirBusyError):
            main.run(tiny_config(training__n_iters=12), trained, "train")
    assert _files(trained) == before


def test_a_run_that_fails_before_training_leaves_no_work_directory(tmp_path):
    from scoresde.configs.cifar10.ddpmpp_vp import get_config as cifar_config

    config = cifar_config()
    config.device, config.data.root = "cpu", str(tmp_path / "no_data_here")
    with pytest.raises(Exception):
        main.run(config, tmp_path / "new" / "run", "train")
    assert not (tmp_path / "new").exists()


def test_a_run_that_fails_while_setting_up_removes_the_work_directory_it_created(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no network today")

    monkeypatch.setattr(trainer, "_build_network", broken)
    with pytest.raises(RuntimeError, match="no network today"):
        main.run(tiny_config(), tmp_path / "new" / "run", "train")
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError, match="no network today"):
        main.run(tiny_config(), tmp_path / "old", "train")
    assert (tmp_path / "old").is_dir()                      # a directory the run did not create stays


# ---------------------------------------------------------------------------------------- recipe on resume
def test_divergence_advice_resumes_with_a_lower_lr(tmp_path, monkeypatch, caplog):
    config = tiny_config(training__n_iters=20)
    with monkeypatch.context() as patch:
        _nan_data_from(patch, step=5)
        with pytest.raises(trainer.TrainingDivergedError) as caught:
            main.run(config, tmp_path, "train")
    advice = re.search(r"--config\.optim\.lr=(\S+?)[,;) ]", str(caught.value))
    assert advice, str(caught.value)
    config.optim.lr = float(advice.group(1))
    assert config.optim.lr < tiny_config().optim.lr
    with caplog.at_level(logging.INFO):
        assert main.run(config, tmp_path, "train")["step"] == 20
    assert any("optim.lr" in r.getMessage() and "resum" in r.getMessage() for r in caplog.records)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["optim"]["lr"] == config.optim.lr
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "checkpoints", 20))
    assert json.loads(state["options"])["optim"]["lr"] == config.optim.lr


def test_warmup_and_grad_clip_may_change_on_resume_but_not_beta1(trained, tmp_path, caplog):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    config = tiny_config(training__n_iters=10)
    config.optim.warmup, config.optim.grad_clip = 4, 0.5
    with caplog.at_level(logging.INFO):
        assert main.run(config, workdir, "train")["step"] == 10
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "optim.warmup" in messages and "optim.grad_clip" in messages
    config = tiny_config(training__n_iters=12)
    config.optim.beta1 = 0.5
    with pytest.raises(ValueError, match=r"cannot resume.*optim\.beta1"):
        main.run(config, workdir, "train")


# ---------------------------------------------------------------------------------------- pretrained config
def test_a_pretrained_config_of_another_suffix_is_one_line(tmp_path, capsys):
    from test_pretrained_cli import pretrained_digits

    (tmp_path / "model.pth").write_bytes(b"not read")
    (tmp_path / "config.yaml").write_text("data: {}\n")
    options = options_from_config(pretrained_digits(tmp_path / "model.pth", tmp_path / "config.yaml"))
    assert main.execute(options, str(tmp_path / "wd"), "sample", str(tmp_path / "out")) == 1
    line = _error_line(capsys)
    assert "config.yaml" in line and ".json" in line and ".py" in line and "NoneType" not in line, line


def test_a_python_pretrained_config_says_it_is_run(tmp_path, capsys):
    from test_pretrained_cli import pretrained_digits

    (tmp_path / "model.pth").write_bytes(b"not read")
    (tmp_path / "config.py").write_text("def get_config():\n    raise RuntimeError('boom')\n")
    options = options_from_config(pretrained_digits(tmp_path / "model.pth", tmp_path / "config.py"))
    assert main.execute(options, str(tmp_path / "wd"), "sample", str(tmp_path / "out")) == 1
    line = _error_line(capsys)
    assert "executed" in line and "boom" in line, line
