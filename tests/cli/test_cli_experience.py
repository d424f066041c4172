"""What a user sees on the command line: help, results next to what they compare with, pictures,
nothing overwritten silently, a finished run that says so, log lines that never glue onto a bar."""
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from tqdm import tqdm

from helpers.cli import run_cli
from helpers.tiny import tiny_config
from scoresde.cli import main
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.train import loop as trainer
from scoresde.run.checkpoint import load_module_state
from scoresde.cli.factory import options_from_config
from scoresde.cli.help import config_help
from scoresde.cli.schema import field_comments, schema_fields
from scoresde.run.runtime import logs_above_bars

# a 6-step run with held-out losses at steps 3 and 6 and a captioned snapshot at the end
EXPERIENCE = {"training.n_iters": 6, "training.eval_freq": 3, "training.checkpoint_freq": 3, "training.keep_last": 3,
              "training.snapshot_freq": 6, "training.snapshot_sampling": True, "training.snapshot_num_samples": 32,
              "optim.warmup": 500, "sampling.num_samples": 32, "sampling.batch_size": 32}


# ---------------------------------------------------------------------------------------- help
def test_help_exits_zero_with_modes_an_example_and_the_way_to_the_fields():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for text in ("modes (--mode):", "train", "eval", "sample", "python main.py --config configs/toy/gmm_vp.py",
                 "--config_help", "--workdir"):
        assert text in result.stdout
    fields = run_cli("--config_help")
    assert fields.returncode == 0 and "training.n_iters = 1300001" in fields.stdout


def test_every_field_has_a_comment_and_config_help_lists_it():
    comments, text = field_comments(), config_help()
    assert set(comments) == set(schema_fields())          # no field without its one-line comment
    for path, default in schema_fields().items():
        assert f"{path} = {default!r}" in text and comments[path] in text


def test_config_help_with_a_config_file_shows_its_values_beside_the_defaults(capsys):
    with pytest.raises(SystemExit) as code:
        main.parse_flags(["main.py", "--config_help", "--config", "configs/toy/gmm_vp.py"])
    assert code.value.code == 0
    text, config = capsys.readouterr().out, gmm_config()
    assert config.training.n_iters != 1300001
    assert f"training.n_iters = {config.training.n_iters!r}  (default 1300001)" in text
    sde_line = next(line for line in text.splitlines() if line.startswith("  training.sde = "))
    assert "'vpsde'" in sde_line and "(default" not in sde_line        # equal to the default: shown once
    for path in schema_fields():                                       # still every field, with its comment
        assert f"  {path} = " in text


def test_config_help_names_unknown_fields_of_the_file_and_a_missing_file(capsys):
    config = gmm_config()
    with config.unlocked():
        config.training.n_iter = 5
    text = config_help(config)
    assert "[not config fields]" in text and "config.training.n_iter is not a config field; did you mean n_iters?" in text
    with pytest.raises(SystemExit) as code:
        main.parse_flags(["main.py", "--config_help", "--config=no/such/config.py"])
    assert code.value.code == 2
    assert "no/such/config.py: no such file" in capsys.readouterr().err


def test_a_typo_in_an_override_says_which_field_was_meant(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main.parse_flags(["main.py", "--config", "configs/toy/gmm_vp.py", f"--workdir={tmp_path}",
                          "--config.training.n_iter=5"])
    assert code.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "config.training.n_iter is not a config field; did you mean n_iters?" in lines[0]
    assert "'batch_size'" in lines[0]                                  # and the fields of the section
    with pytest.raises(SystemExit):
        main.parse_flags(["main.py", "--config", "configs/toy/gmm_vp.py", f"--workdir={tmp_path}",
                          "--config.trainig.n_iters=5"])               # a misspelt section: the whole path
    assert "did you mean training.n_iters?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    trainer.train(options_from_config(tiny_config(**EXPERIENCE)), workdir)
    return workdir


def test_training_draws_a_loss_curve_and_captioned_snapshots(trained):
    with Image.open(trained / "loss_curve.png") as png:
        assert png.format == "PNG" and min(png.size) > 200
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    with Image.open(trained / "snapshots" / "samples_00000006.png") as png:
        assert png.format == "PNG"


def test_rerunning_a_finished_run_says_so_and_appends_nothing(trained, caplog):
    before = (trained / "metrics.jsonl").read_text()
    with caplog.at_level(logging.INFO):
        result = trainer.train(options_from_config(tiny_config(**EXPERIENCE)), trained)
    assert result["already_finished"] and result["step"] == 6
    assert any("already finished" in r.getMessage() and "--config.training.n_iters" in r.getMessage()
               for r in caplog.records)
    assert (trained / "metrics.jsonl").read_text() == before


# ---------------------------------------------------------------------------------------- eval / sample
def test_eval_reports_each_figure_beside_its_baseline(trained, caplog):
    with caplog.at_level(logging.INFO):
        metrics = main.run(tiny_config(**EXPERIENCE), trained, "eval")
    # the paired gap: the mean of log p_data - log p_model over the 32 held-out points; it differs from
    # nll - true_nll by the 32-point mean of -log p_data minus the entropy (spread of log p_data about
    # 1 nat, so a standard error near 0.2): 1 nat is a 5-sigma bound
    assert abs(metrics["nll_gap"] - (metrics["nll"] - metrics["true_nll"])) < 1.0
    assert metrics["nll_gap_stderr"] > 0 and "loss_meaning" in metrics
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "the data's own entropy is" in text and "the gap (log p_data - log p_model" in text
    assert "score evaluations" in text
    assert "held-out loss" in text and "lower is better" in text


def test_a_second_sample_run_keeps_the_first(trained):
    config = tiny_config(**EXPERIENCE)
    main.run(config, trained, "sample")
    config.sampling.steps = 8
    main.run(config, trained, "sample")
    runs = sorted(p.name for p in (trained / "samples").iterdir() if p.is_dir())
    assert runs == ["step00000006_fast", "step00000006_fast-2"]
    first = json.loads((trained / "samples" / runs[0] / "config.json").read_text())
    latest = json.loads((trained / "samples" / "config.json").read_text())
    assert first["sampling"]["steps"] == 5 and latest["sampling"]["steps"] == 8
    info = json.loads((trained / "samples" / "info.json").read_text())
    assert 0.0 <= info["in_support_frac"] <= 1.0 and info["nonfinite_samples"] == 0


def test_images_eval_names_the_uniform_baseline(tmp_path):
    config = tiny_config("digits/ddpmpp_vp", **{"training.n_iters": 2, "training.log_freq": 1,
                                                "training.snapshot_freq": 2, "training.snapshot_sampling": True,
                                                "sampling.num_samples": 64, "sampling.batch_size": 64})
    main.run(config, tmp_path, "train")
    metrics = main.run(config, tmp_path, "eval")
    assert metrics["uniform_bpd"] == pytest.approx(4.087, abs=1e-3)          # log2 17


# ---------------------------------------------------------------------------------------- output
def test_log_lines_never_glue_onto_a_progress_bar(monkeypatch):
    """With a bar on stderr, every log line ends up alone after the bar is cleared."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with logs_above_bars(), tqdm(total=3, file=stream, mininterval=0) as bar:
            for i in range(3):
                bar.update(1)
                logging.getLogger("training.test").warning("message %d", i)
    finally:
        root.removeHandler(handler)
    shown = [line.split("\r")[-1] for line in stream.getvalue().split("\n")]   # what a terminal shows
    assert [line for line in shown if "message" in line] == ["message 0", "message 1", "message 2"]


def test_no_deprecation_warning_from_loading_a_config(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")                   # every warning, even those a process shows once
        result = run_cli("--config", "configs/toy/gmm_vp.py", workdir=tmp_path / "w", mode="eval")
    assert "DeprecationWarning" not in result.stderr and "load_module" not in result.stderr
    shown = [f"{w.category.__name__}: {w.message}" for w in caught]
    assert not any("DeprecationWarning" in line or "load_module" in line for line in shown), shown


def test_a_strict_load_mismatch_is_one_line_with_the_first_names():
    network = options_from_config(tiny_config(**EXPERIENCE)).network.build((2,))
    state = {f"extra_{i}": torch.zeros(1) for i in range(10)}
    with pytest.raises(ValueError) as caught:
        load_module_state(network, state, Path("checkpoint_00000001.pt"))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600
    assert "missing (" in message and "10 unexpected (extra_0, extra_1, extra_2, ... (10 in all))" in message


def test_plots_draw_without_a_display():
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no backend or font warnings either
        from scoresde.run.plots import image_grid, loss_curve, scatter_plot
        import numpy as np
        png = scatter_plot(np.random.default_rng(0).normal(size=(100, 2)), title="t",
                           log_density=lambda p: -0.5 * (p ** 2).sum(1))
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert image_grid(np.random.default_rng(0).random((6, 1, 8, 8)), caption="c")[:4] == b"\x89PNG"
        assert loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}, {"step": 2, "nll": 0.4}])[:4] \
            == b"\x89PNG"


def test_tensorboard_logging_when_installed(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="the tensorboard extra is not installed "
                        "(pip install -e '.[tensorboard]'); CI installs it")
    config = tiny_config(**{**EXPERIENCE, "training.n_iters": 4, "training.snapshot_freq": 4})
    config.training.tensorboard = True
    trainer.train(options_from_config(config), tmp_path)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
