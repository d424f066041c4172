"""``--mode distill`` and sampling its students: a tiny toy teacher, each method distilled a few steps and
sampled, the student starting as the teacher, exact resume after SIGTERM (the target network and the
progressive teacher in the checkpoint), and one-line errors for bad input."""
import json
import os
import signal

import pytest
import torch

from helpers.cli import run_cli
from helpers.tiny import tiny_config, tiny_flags
from scoresde.cli.main import run
from scoresde.run import checkpoint as ckpt
from scoresde.run.workdir import METRICS_FILE
from scoresde.train.distill import ConsistencyObjective, ProgressiveObjective


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A toy VP score model after 8 updates (its quality does not matter: the tests check the wiring)."""
    workdir = tmp_path_factory.mktemp("teacher")
    run(tiny_config(training__n_iters=8), workdir, "train")
    return workdir


def distill_config(method: str, teacher_workdir, **overrides):
    teacher_field = "" if method == "ct" else str(teacher_workdir)
    return tiny_config(**{"training.n_iters": 4, "distill.method": method, "distill.teacher_workdir": teacher_field,
                          "distill.pd_start_steps": 8, **overrides})


def sample_config(method: str, **overrides):
    sampling = {"sampling.method": "ddim", "sampling.steps": 2} if method == "progressive" else \
        {"sampling.method": "consistency", "sampling.steps": 2}
    return tiny_config(**{**sampling, **overrides})


def latest(workdir) -> dict:
    state, _ = ckpt.load_latest(workdir / "checkpoints")
    return state


# ---------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("method", ["cd", "ct", "progressive"])
def test_each_method_distills_and_samples(tmp_path, teacher, method):
    result = run(distill_config(method, teacher), tmp_path, "distill")
    assert result == {"step": 4, "stopped_by_signal": False, "signal": None}
    state = latest(tmp_path)
    assert json.loads(state["options"])["distill"]["method"] == method
    assert set(state["objective"]) == {"cd": {"target"}, "ct": set(), "progressive": {"teacher"}}[method]
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses and all(v is not None and v == v and v >= 0 for v in losses)     # per-sample terms are >= 0
    assert (tmp_path / "config_train.json").is_file() or any(tmp_path.glob("config*.json"))
    info = run(sample_config(method), tmp_path, "sample")
    # consistency: one evaluation per step; the progressive student's DDIM adds its final denoising step
    assert (info["method"], info["nfe_per_batch"]) == (("ddim", 3) if method == "progressive" else ("consistency", 2))
    assert info["nonfinite_samples"] == 0


@pytest.mark.parametrize("method", ["cd", "progressive"])
def test_the_student_starts_as_the_teacher(tmp_path, teacher, method):
    """After 0 updates the student, its EMA (and cd's target) are the teacher's EMA weights; the progressive
    student then samples exactly as the teacher's DDIM on the same grid."""
    run(distill_config(method, teacher, training__n_iters=0), tmp_path, "distill")
    student, taught = latest(tmp_path), latest(teacher)
    copies = [student["model"], student["ema"]["shadow"]]
    copies.append(student["objective"]["target"]["shadow"] if method == "cd" else student["objective"]["teacher"])
    for weights in copies:
        assert weights.keys() == taught["ema"]["shadow"].keys()
        assert all(torch.equal(weights[k], taught["ema"]["shadow"][k]) for k in weights)
    if method == "progressive":
        mine = run(sample_config(method), tmp_path, "sample", outdir=tmp_path / "s")
        theirs = run(sample_config(method), teacher, "sample", outdir=tmp_path / "t")
        assert mine["nfe_per_batch"] == theirs["nfe_per_batch"] == 3
        a, b = (dict(__import__("numpy").load(d / "samples.npz"))["samples"] for d in (tmp_path / "s", tmp_path / "t"))
        assert (a == b).all()


def test_a_class_conditional_teacher_is_distilled_with_its_null_label(tmp_path):
    """A conditional teacher trained with label dropout: the student is its network given the null label
    (initialised bit for bit from it) and samples unlabelled; one without label dropout is refused."""
    conditional = {"model.num_classes": 8, "training.label_dropout": 0.2}
    run(tiny_config(training__n_iters=2, **conditional), tmp_path / "teacher", "train")
    run(distill_config("cd", tmp_path / "teacher", training__n_iters=0, **conditional), tmp_path / "cd", "distill")
    student, taught = latest(tmp_path / "cd"), latest(tmp_path / "teacher")
    assert all(torch.equal(student["model"][k], taught["ema"]["shadow"][k]) for k in student["model"])
    run(distill_config("cd", tmp_path / "teacher", training__n_iters=2, **conditional), tmp_path / "cd", "distill")
    info = run(sample_config("cd", **conditional), tmp_path / "cd", "sample")
    assert info["nfe_per_batch"] == 2 and info["nonfinite_samples"] == 0 and "label" not in info
    run(tiny_config(training__n_iters=2, model__num_classes=8), tmp_path / "no_dropout", "train")
    with pytest.raises(ValueError, match=r"class-conditional without label dropout .* no unconditional score"):
        run(distill_config("cd", tmp_path / "no_dropout", model__num_classes=8), tmp_path / "cd2", "distill")


# ---------------------------------------------------------------------------------------- resume
def signal_at(monkeypatch, cls, stop_step: int):
    """A real SIGTERM to this process right after update ``stop_step`` of the objective ``cls``."""
    original = cls.step

    def step_then_signal(self, run_, x, labels=None):
        loss = original(self, run_, x, labels)
        if run_.step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(cls, "step", step_then_signal)


def assert_same_tensors(a, b, where: str):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b) or torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)) and torch.equal(a.isnan(), b.isnan()), where
    else:
        assert a == b, where


@pytest.mark.parametrize("method, cls, stop", [("cd", ConsistencyObjective, 3), ("progressive", ProgressiveObjective, 3),
                                               ("progressive", ProgressiveObjective, 5)])
def test_resume_after_sigterm_is_bit_identical(tmp_path, teacher, monkeypatch, method, cls, stop):
    """6 updates straight vs stopped by SIGTERM after update ``stop`` and resumed: the same weights, EMA,
    optimizer, target network / progressive teacher, loader and random states. Progressive's second round
    starts at update 4: stopped at 3 its teacher hand-over and EMA restart happen after the resume, stopped
    at 5 the resumed run needs the hand-over's teacher from the checkpoint."""
    config = distill_config(method, teacher, training__n_iters=6, training__checkpoint_freq=4,
                            training__log_freq=1)
    assert run(config, tmp_path / "straight", "distill")["step"] == 6
    signal_at(monkeypatch, cls, stop)
    assert run(config, tmp_path / "split", "distill") == {"step": stop, "stopped_by_signal": True,
                                                          "signal": signal.SIGTERM}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    assert run(config, tmp_path / "split", "distill")["step"] == 6
    a, b = latest(tmp_path / "straight"), latest(tmp_path / "split")
    for key in ("step", "model", "ema", "optimizer", "loader", "rng", "objective"):
        assert_same_tensors(a[key], b[key], key)
    records = [json.loads(line) for line in (tmp_path / "split" / METRICS_FILE).read_text().splitlines()]
    assert [r["event"] for r in records if "event" in r] == ["stopped", "finished"]
    straight = [json.loads(line) for line in (tmp_path / "straight" / METRICS_FILE).read_text().splitlines()]
    assert [r["loss"] for r in records if "loss" in r] == [r["loss"] for r in straight if "loss" in r]


# ---------------------------------------------------------------------------------------- bad input
def test_bad_method_is_one_line_on_the_command_line(tmp_path):
    result = run_cli(*tiny_flags(**{"distill.method": "cm"}), workdir=tmp_path / "s", mode="distill")
    assert result.returncode == 2
    assert "config.distill.method must be one of ['cd', 'ct', 'progressive'], got 'cm'" in result.last_line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"distill.teacher_workdir": ""}, r"config\.distill\.teacher_workdir is required for distill\.method='cd'"),
    ({"model.beta_max": 15.0}, r"config\.distill\.teacher_workdir: the teacher .* was trained on the process vpsde "
                               r".*'beta_max': 20\.0.*this config on vpsde .*'beta_max': 15\.0"),
    ({"model.hidden": 32}, r"config\.distill\.init_from_teacher=True needs the teacher's network"),
    ({"distill.solver": "euler"}, r"config\.distill\.solver must be one of \['heun', 'ddim'\]"),
    ({"distill.pd_rounds": 4}, r"config\.distill\.pd_start_steps=8 must be divisible by 2\^distill\.pd_rounds=16"),
    ({"distill.method": "progressive", "distill.init_from_teacher": False},
     r"config\.distill\.init_from_teacher must be True for distill\.method='progressive'"),
    ({"distill.target_decay": 1.5}, r"config\.distill\.target_decay"),
])
def test_bad_distill_input(tmp_path, teacher, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(distill_config("cd", teacher, **overrides), tmp_path / "s", "distill")
    assert not (tmp_path / "s").exists()                  # nothing written


def test_teacher_must_be_another_workdir_with_a_checkpoint(tmp_path, teacher):
    with pytest.raises(ValueError, match=r"is --workdir itself"):
        run(distill_config("cd", teacher), teacher, "distill")
    with pytest.raises(FileNotFoundError, match=r"config\.distill\.teacher_workdir: no checkpoint in"):
        run(distill_config("cd", tmp_path / "none"), tmp_path / "s", "distill")


def test_sampling_with_the_wrong_method_is_refused(tmp_path, teacher):
    run(distill_config("cd", teacher), tmp_path / "cd", "distill")
    with pytest.raises(ValueError, match=r"holds a consistency student \(distill\.method='cd'\): it has no score; "
                                         r"sample it with --config\.sampling\.method=consistency"):
        run(tiny_config(), tmp_path / "cd", "sample")
    with pytest.raises(ValueError, match=r"holds a consistency student \(--mode distill\): it has no score, so the "
                                         r"held-out loss and likelihoods of --mode eval do not apply"):
        run(sample_config("cd"), tmp_path / "cd", "eval")
    with pytest.raises(ValueError, match=r"config\.sampling\.method='consistency' samples a consistency student"):
        run(sample_config("cd"), teacher, "sample", outdir=tmp_path / "out")
    run(distill_config("progressive", teacher), tmp_path / "pd", "distill")
    with pytest.raises(ValueError, match=r"progressive-distillation student for 2 DDIM steps: sample it with "
                                         r"--config\.sampling\.method=ddim --config\.sampling\.steps=2"):
        run(sample_config("progressive", sampling__steps=4), tmp_path / "pd", "sample")
