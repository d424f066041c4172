"""``main.py`` end to end: training through the command line (in this process), then eval and sample
through ``main.run`` (toy data and images), config errors through absl's flag parsing, and a real SIGTERM
to a training process started as ``python main.py`` (the one subprocess: each pays for importing torch)."""
import json
import re
import math
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from PIL import Image

from helpers.cli import run_cli, run_cli_process
from helpers.tiny import tiny_config, tiny_flags
from scoresde.cli import main
from scoresde.run.checkpoint import list_checkpoints

# the sizes of these end-to-end runs (eval_bounds and eval_quality use them too)
TOY = {"training.n_iters": 6, "training.eval_freq": 3, "training.checkpoint_freq": 3, "training.keep_last": 3,
       "training.snapshot_freq": 6, "optim.warmup": 500,
       "training.snapshot_sampling": True, "training.snapshot_num_samples": 16, "eval.num_samples": 64,
       "eval.batch_size": 64, "eval.true_nll_samples": 20000, "sampling.steps": 50, "sampling.num_samples": 32,
       "sampling.batch_size": 32}
DIGITS = {"data.num_train": 128, "training.snapshot_freq": 4, "training.snapshot_sampling": True,
          "model.ch_mult": (1, 2), "model.attn_resolutions": (4,), "sampling.num_samples": 6}


# Enough training for a model a broken trainer cannot fake: 2 000 steps of a small MLP (about 5 s).
# Measured: NLL gap 0.71 +- 0.07 nats and 58% of samples on the support; an untrained network has a
# gap of 9.7 nats and 0% on the support, so the bounds below leave room both ways.
LEARNS = {**TOY, "data.num_train": 20000, "training.batch_size": 256, "training.n_iters": 2000,
          "training.checkpoint_freq": 1000, "training.snapshot_freq": 2000, "training.eval_freq": 1000,
          "training.log_freq": 100, "model.hidden": 64, "model.n_blocks": 2, "optim.lr": 2e-3, "optim.warmup": 100,
          "model.ema_rate": 0.99, "eval.num_samples": 256, "eval.batch_size": 256}
GAP_BOUND = 2.0            # nats; measured 0.71, untrained 9.7
SUPPORT_FLOOR = 0.3        # measured 0.58, untrained 0.0


def test_train_from_the_command_line_then_eval_and_sample(tmp_path):
    result = run_cli(*tiny_flags(**LEARNS), workdir=tmp_path, mode="train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("*.pt"))] == [
        "checkpoint_00001000.pt", "checkpoint_00002000.pt"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["training"]["n_iters"] == 2000 and saved["model"]["hidden"] == 64     # overrides resolved
    assert (tmp_path / "snapshots" / "samples_00002000.png").is_file()
    assert any("loss" in json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())

    config = tiny_config(**LEARNS)
    main.run(config, tmp_path, "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["step"] == 2000 and isinstance(metrics["step"], int)
    assert isinstance(metrics["loss"], float) and math.isfinite(metrics["loss"])
    assert metrics["true_nll"] == pytest.approx(math.log(8) + math.log(2 * math.pi * math.e * 0.01), abs=0.03)
    assert 0 < metrics["nll"] - metrics["true_nll"] < GAP_BOUND

    config.sampling.method, config.sampling.steps, config.sampling.num_samples = "fast", 10, 500
    config.sampling.batch_size = 500
    main.run(config, tmp_path, "sample")
    samples = np.load(tmp_path / "samples" / "samples.npz")["samples"]
    assert samples.shape == (500, 2) and np.isfinite(samples).all()
    with Image.open(tmp_path / "samples" / "samples.png") as png:
        assert png.format == "PNG" and min(png.size) > 300          # a matplotlib figure, not a thumbnail
    info = json.loads((tmp_path / "samples" / "info.json").read_text())
    assert info["method"] == "fast" and info["in_support_frac"] > SUPPORT_FLOOR
    assert json.loads((tmp_path / "samples" / "config.json").read_text())["sampling"]["method"] == "fast"


def test_images_train_eval_sample_in_process(tmp_path):
    config = tiny_config("digits/ddpmpp_vp", **DIGITS)
    assert main.run(config, tmp_path, "train")["step"] == 4
    metrics = main.run(config, tmp_path, "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics
    assert math.isfinite(metrics["bpd"]) and metrics["bpd"] > 0 and "nll" not in metrics
    assert (tmp_path / "eval" / "config.json").is_file()
    main.run(config, tmp_path, "sample")
    samples = np.load(tmp_path / "samples" / "samples.npz")["samples"]
    assert samples.shape == (6, 1, 8, 8) and samples.min() >= 0.0 and samples.max() <= 1.0
    with Image.open(tmp_path / "samples" / "samples.png") as png:
        assert png.format == "PNG" and min(png.size) > 200


def test_config_errors_name_the_field(tmp_path, parsed_flags, capsys):
    parsed_flags("--config=configs/toy/gmm_vp.py", f"--workdir={tmp_path}", "--config.training.sde=vpsdee")
    assert flags.FLAGS.config.training.sde == "vpsdee"                  # the override reached the config
    with pytest.raises(SystemExit) as code:
        main.main(["main.py"])
    assert code.value.code == 2
    assert re.search(r"^main\.py: error: invalid config: config\.training\.sde must be one of \[.*'vpsde'",
                     capsys.readouterr().err.strip().splitlines()[-1])
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(AttributeError):                                 # locked: no new fields
        flags.FLAGS.config.training.no_such_field = 1
    with pytest.raises(ValueError, match="mode must be one of"):
        main.run(tiny_config("digits/ddpmpp_vp", **DIGITS), tmp_path, "fit")


def test_a_typo_in_an_override_is_one_line_naming_the_field(tmp_path):
    result = run_cli(*tiny_flags(**TOY), "--config.training.foo=3", workdir=tmp_path, mode="train")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.training.foo is not a config field" in lines[0], result.stderr
    assert "'n_iters'" in lines[0]                                     # the fields it could have meant
    result = run_cli(*tiny_flags(**TOY), "--config.sampling.order=7",    # checked before any work starts
                     workdir=tmp_path, mode="train")
    assert result.returncode != 0 and "config.sampling.order must be one of [1, 2, 3], got 7" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def _wait_for_training(workdir: Path, proc, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    metrics = workdir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(tmp_path):
    # no periodic checkpoint or snapshot may land before the signal: the only checkpoint is SIGTERM's
    log = tmp_path.parent / f"{tmp_path.name}-train.log"
    proc = run_cli_process(*tiny_flags(**{**TOY, "training.n_iters": 1000000, "training.checkpoint_freq": 100000,
                                          "training.snapshot_freq": 100000}),
                           workdir=tmp_path, mode="train", log=log)
    _wait_for_training(tmp_path, proc, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    stderr = log.read_text()
    assert proc.returncode == 143, stderr[-3000:]             # 128 + SIGTERM: a pre-empted job
    assert "SIGTERM received: checkpoint written at step" in stderr
    (step, _), = list_checkpoints(tmp_path / "checkpoints")
    assert 2 <= step < 1_000_000
    config = tiny_config(**TOY)
    config.training.n_iters = step + 2
    assert main.run(config, tmp_path, "train") == {"step": step + 2, "stopped_by_signal": False, "signal": None}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if "event" in r] == ["stopped", "finished"]
    assert records[-1]["step"] == step + 2
