"""Faults a run must survive without losing good state or reporting garbage: a real NaN in training,
config drift against a checkpoint, a second trainer on the same work directory (a real second
process), a torn metrics line, failed or non-finite eval / sample, and command-line mistakes.
Each test reproduces the fault for real and checks what the user sees."""
import json
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import REPO, run_cli, run_cli_process
from helpers.tiny import tiny_config, tiny_flags
from scoresde.cli import main
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer
from scoresde.cli.factory import options_from_config
from scoresde.run.workdir import NonFiniteResultsError, WorkdirBusyError, WorkdirLock

def train(config, workdir):
    return trainer.train(options_from_config(config), workdir)


def _steps(workdir):
    return [s for s, _ in ckpt.list_checkpoints(workdir / "checkpoints")]


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------- divergence
def _nan_data_from(monkeypatch, step: int):
    """From update ``step`` on, the batch holds a NaN: a real NaN through the loss and backward pass."""
    original = trainer.next_batch

    def poisoned(run):
        x, labels = original(run)
        if run.step + 1 >= step:
            x = x.clone()
            x[0, 0] = float("nan")
        return x, labels

    monkeypatch.setattr(trainer, "next_batch", poisoned)


def test_divergence_skips_updates_stops_and_keeps_the_good_checkpoints(tmp_path, monkeypatch):
    config = tiny_config(training__n_iters=20)
    _nan_data_from(monkeypatch, step=5)
    with pytest.raises(trainer.TrainingDivergedError) as caught:
        train(config, tmp_path)
    message = str(caught.value)
    # steps 5-8 were skipped; the check at the step-8 log line stops the run (limit 3)
    assert "4 consecutive updates (steps 5-8" in message and "checkpoint_00000006.pt (step 6)" in message
    assert _steps(tmp_path) == [4, 6]                      # nothing after the divergence, nothing pruned wrongly
    good = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "checkpoints", 4))
    last = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "checkpoints", 6))
    for key in good["model"]:                              # the skipped updates left the weights alone
        assert torch.equal(good["model"][key], last["model"][key])
        assert torch.isfinite(last["model"][key]).all() and torch.isfinite(last["ema"]["shadow"][key]).all()
    assert all(torch.isfinite(v).all() for s in last["optimizer"]["state"].values() for v in s.values())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any(r.get("event") == "finished" for r in records)
    logged = {r["step"]: r for r in records if "loss" in r}
    assert logged[6]["loss"] is None and logged[6]["skipped_updates"] == 2     # steps 5 and 6: none applied
    assert logged[4]["skipped_updates"] == 0 and math.isfinite(logged[4]["loss"])


def test_weights_that_went_non_finite_are_never_written(tmp_path, monkeypatch):
    config = tiny_config(training__n_iters=6)
    original = trainer.train_step

    def corrupt_after(run, x, labels=None):
        loss = original(run, x, labels)
        if run.step == 5:
            with torch.no_grad():
                next(run.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(trainer, "train_step", corrupt_after)
    with pytest.raises(trainer.TrainingDivergedError, match=r"NaN or inf at step 6.*checkpoint_00000004\.pt"):
        train(config, tmp_path)
    assert _steps(tmp_path) == [2, 4]


def test_divergence_on_the_command_line_exits_non_zero_with_one_line(tmp_path, monkeypatch, capsys):
    config = tiny_config(training__n_iters=20)
    _nan_data_from(monkeypatch, step=3)
    assert main.execute(options_from_config(config), str(tmp_path), "train") == 1
    line = _last_line(capsys.readouterr().err)
    assert line.startswith("main.py: error: training diverged") and "TrainingDivergedError" in line


# ---------------------------------------------------------------------------------------- drift
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    train(tiny_config(), workdir)
    return workdir


def test_eval_with_another_process_is_refused_listing_the_fields(trained):
    config = tiny_config()
    config.training.sde, config.model.sigma_max = "vesde", 5.0
    before = sorted(p.name for p in trained.rglob("*"))
    with pytest.raises(ValueError, match=r"cannot use .*checkpoint_00000008\.pt.*sde\.name: checkpoint "
                                         r"'vpsde', requested 'vesde'.*sde\.kwargs\.sigma_max"):
        main.run(config, trained, "eval")
    assert sorted(p.name for p in trained.rglob("*")) == before          # no metrics.json overwritten
    config = tiny_config()
    config.model.hidden = 32
    with pytest.raises(ValueError, match=r"network\.kwargs\.hidden: checkpoint 16, requested 32"):
        main.run(config, trained, "sample")


def test_resume_refuses_another_model_or_recipe_and_logs_allowed_changes(trained, tmp_path, caplog):
    config = tiny_config()
    config.model.num_scales = 100
    with pytest.raises(ValueError, match=r"cannot resume training from .*sde\.kwargs\.N: checkpoint 50, "
                                         r"requested 100"):
        train(config, trained)
    config = tiny_config()
    config.optim.beta1 = 0.5
    with pytest.raises(ValueError, match=r"optim\.beta1: checkpoint 0\.9, requested 0\.5"):
        train(config, trained)
    config = tiny_config(training__n_iters=10)
    config.sampling.steps = 7                                          # free: logged, resumed
    with caplog.at_level(logging.INFO, logger="scoresde.run.drift"):
        assert train(config, trained)["step"] == 10
    assert any("train.n_iters: checkpoint 8, requested 10" in r.getMessage() for r in caplog.records)


def test_every_option_has_one_tier():
    from scoresde.run.drift import FREE, is_free, leaves, model_leaves
    for config in (tiny_config(), cond_config()):
        options = options_from_config(config)
        model, every = set(model_leaves(options)), set(leaves(options))
        assert model <= every
        assert not any(is_free(p) for p in model)
    assert all(any(p == entry or p.startswith(entry) for p in every) for entry in FREE)   # no stale entry


def cond_config():
    """A class-conditional digits network: tuples and more keyword arguments among the options."""
    from scoresde.configs.digits.ddpmpp_vp_cond import get_config
    return get_config()


def _as_format_one(workdir: Path) -> None:
    """Rewrite every checkpoint of ``workdir`` as written before checkpoints stored their options."""
    for _, path in ckpt.list_checkpoints(workdir / "checkpoints"):
        state = ckpt.read_checkpoint(path)
        del state["options"]
        ckpt.atomic_save({**state, "format": 1}, path)


def test_a_checkpoint_without_options_says_how_to_upgrade_it(trained, tmp_path, capsys):
    import shutil
    from scoresde.cli import upgrade
    workdir = tmp_path / "old"
    shutil.copytree(trained, workdir)
    _as_format_one(workdir)
    assert main.execute(options_from_config(tiny_config()), str(workdir), "sample") == 1
    line = _last_line(capsys.readouterr().err)
    assert "before checkpoints stored their options" in line and "python -m scoresde.cli.upgrade" in line
    assert upgrade.main(["--workdir", str(workdir)]) == 0
    state = ckpt.read_checkpoint(ckpt.list_checkpoints(workdir / "checkpoints")[-1][1])
    from scoresde.run.options import RunOptions
    stored, requested = RunOptions.from_json(state["options"]), options_from_config(tiny_config())
    assert (stored.sde, stored.network, stored.loss) == (requested.sde, requested.network, requested.loss)
    assert main.run(tiny_config(), workdir, "sample", outdir=tmp_path / "out")["num_samples"] == 16
    assert upgrade.upgrade_workdir(workdir) == []                       # already upgraded: left alone


# ---------------------------------------------------------------------------------------- lock
def _wait_for_a_checkpoint(workdir: Path, proc, timeout: float = 120.0) -> None:
    """Until the trainer has written a checkpoint (they rotate fast: any one will do)."""
    deadline = time.monotonic() + timeout
    while not ckpt.list_checkpoints(workdir / "checkpoints"):
        assert proc.poll() is None, f"the trainer exited with {proc.returncode}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


def test_second_trainer_fails_at_once_eval_runs_beside_and_sigterm_exits_143(tmp_path):
    log = tmp_path.parent / f"{tmp_path.name}-train.log"
    first = run_cli_process(*tiny_flags(training__n_iters=1000000, training__checkpoint_freq=20,
                                        training__log_freq=20, training__keep_last=3),
                            workdir=tmp_path, mode="train", log=log)
    try:
        _wait_for_a_checkpoint(tmp_path, first)
        second = run_cli(*tiny_flags(), workdir=tmp_path, mode="train")   # here, against the other process
        assert second.returncode == 1
        line = _last_line(second.stderr)
        assert f"is in use by another trainer (pid {first.pid} on" in line and "WorkdirBusyError" in line
        beside = run_cli(*tiny_flags(eval__likelihood=False), workdir=tmp_path, mode="eval")   # eval needs no lock
        assert beside.returncode == 0, beside.stderr[-2000:]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    stderr = log.read_text()
    assert first.returncode == 143, stderr[-2000:]                    # 128 + SIGTERM, as schedulers expect
    assert "SIGTERM received: checkpoint written at step" in stderr


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, '.');"
                               "from scoresde.run.workdir import WorkdirLock;"
                               f"lock = WorkdirLock({str(tmp_path)!r}).__enter__(); print('locked', flush=True);"
                               "time.sleep(600)"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
            WorkdirLock(tmp_path).__enter__()
    finally:
        holder.kill()                                                  # kill -9: no clean-up runs
        holder.wait()
    with WorkdirLock(tmp_path):
        pass


# ---------------------------------------------------------------------------------------- metrics
def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, caplog):
    train(tiny_config(), tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 9, "loss": 0.12')                          # a crash mid-append
    with caplog.at_level(logging.WARNING):
        assert train(tiny_config(training__n_iters=10), tmp_path)["step"] == 10
    assert any("torn last line" in r.getMessage() for r in caplog.records)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]      # every line parses
    assert records[-1] == {"step": 10, "event": "finished"}


# ---------------------------------------------------------------------------------------- eval / sample
def test_failed_eval_writes_nothing_and_outdir_keeps_the_workdir_untouched(trained, tmp_path, monkeypatch):
    import scoresde.cli.modes.eval as evaluate
    main.run(tiny_config(), trained, "eval")
    before = {p: p.read_bytes() for p in (trained / "eval").rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("likelihood solver failed")

    monkeypatch.setattr(evaluate, "log_likelihoods", broken)
    config = tiny_config()
    config.eval.rtol = 1e-4                                            # a new setting that then fails
    with pytest.raises(RuntimeError, match="solver failed"):
        main.run(config, trained, "eval")
    after = {p: p.read_bytes() for p in (trained / "eval").rglob("*") if p.is_file()}
    assert after == before                                  # old results and config, no new folder
    monkeypatch.undo()

    listing = sorted(str(p) for p in trained.rglob("*"))
    out = tmp_path / "elsewhere"
    main.run(tiny_config(), trained, "sample", outdir=out)
    assert sorted(str(p) for p in trained.rglob("*")) == listing
    latest = ["config.json", "info.json", "samples.npz", "samples.png"]
    assert sorted(p.name for p in out.iterdir()) == latest + ["step00000010_fast"]
    assert sorted(p.name for p in (out / "step00000010_fast").iterdir()) == latest
    assert json.loads((out / "config.json").read_text())["sampling"]["steps"] == 5


def _poison_ema(workdir: Path, step: int) -> None:
    """Rewrite checkpoint ``step`` with NaN EMA weights (what an old, unguarded run could leave)."""
    path = ckpt.checkpoint_path(workdir / "checkpoints", step)
    state = ckpt.read_checkpoint(path)
    for value in state["ema"]["shadow"].values():
        if value.is_floating_point():
            value.fill_(float("nan"))
    ckpt.atomic_save(state, path)


def test_nan_model_makes_sample_and_eval_fail_loudly(trained, tmp_path):
    import shutil
    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    _poison_ema(workdir, max(_steps(workdir)))
    with pytest.raises((ValueError, NonFiniteResultsError), match=r"(non-finite|NaN)"):
        main.run(tiny_config(), workdir, "sample")
    with pytest.raises((ValueError, NonFiniteResultsError), match=r"(non-finite|NaN)"):
        main.run(tiny_config(), workdir, "eval")
    assert not (workdir / "samples" / "samples.npz").exists() or \
        json.loads((workdir / "samples" / "info.json").read_text())["nonfinite_samples"] > 0


def test_nonfinite_results_are_counted_in_the_files(trained, tmp_path, monkeypatch):
    import scoresde.cli.modes.sample as sampling

    def nan_rows(*args, **kwargs):
        x = torch.randn(16, 2)
        x[3] = float("nan")
        return x, 5

    monkeypatch.setattr(sampling, "generate", nan_rows)
    with pytest.raises(NonFiniteResultsError, match="1 of 16 samples hold NaN"):
        main.run(tiny_config(), trained, "sample", outdir=tmp_path)
    assert json.loads((tmp_path / "info.json").read_text())["nonfinite_samples"] == 1
    assert np.isnan(np.load(tmp_path / "samples.npz")["samples"]).any()


# ---------------------------------------------------------------------------------------- command line
def test_command_line_mistakes_are_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    (tmp_path / "not_a_config.py").write_text("def get_config():\n    return {'training': {}}\n")
    run, toy = str(tmp_path / "run"), "configs/toy/gmm_vp.py"
    cases = [   # (config file, work directory, extra flags), exit status, text of the one line
        ((toy, run, ["--config.training.foo=3"]), 2, "config.training.foo is not a config field"),
        ((str(tmp_path / "missing.py"), run, []), 2, "cannot load the config file"),
        ((str(tmp_path / "broken.py"), run, []), 2, "SyntaxError"),
        ((str(tmp_path / "not_a_config.py"), run, []), 2, "must be an ml_collections.ConfigDict"),
        ((toy, str(tmp_path / "a_file"), []), 2, "is a file, not a directory"),
        ((toy, str(tmp_path / "a_file" / "run"), []), 2, "is a file, not a directory"),
        ((toy, run, ["--config.data.num_train=512", "--config.training.batch_size=1024"]), 1,
         "batch_size=1024 is larger than the training set"),
    ]
    for (config, workdir, extra), status, text in cases:
        result = run_cli("--config", config, *extra, workdir=workdir, mode="train")
        assert result.returncode == status, (extra, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (extra, result.stderr[-2000:])
        line = _last_line(result.stderr)
        assert line.startswith("main.py: error:") and text in line, (extra, line)


def test_eval_and_sample_never_create_the_work_directory(tmp_path):
    for mode in ("eval", "sample"):
        result = run_cli(*tiny_flags(), workdir=tmp_path / "nothing", mode=mode)
        assert result.returncode == 2 and "does not exist; train a model there first" in _last_line(result.stderr)
    assert not (tmp_path / "nothing").exists()
