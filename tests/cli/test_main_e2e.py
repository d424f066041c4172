"""``main.py`` end to end: training through the real command line, then eval and sample through
``main.run`` (toy data and images), config errors through absl's flag parsing, and a real SIGTERM to a
training process. Subprocesses are few: each pays for importing torch."""
import ast
import json
import re
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from PIL import Image

from scoresde.cli import main
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.run.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[2]
TINY_TOY = ["--config.data.num_train=512", "--config.training.batch_size=64", "--config.training.n_iters=6",
            "--config.training.log_freq=2", "--config.training.eval_freq=3", "--config.training.checkpoint_freq=3",
            "--config.training.snapshot_freq=6", "--config.training.snapshot_num_samples=16",
            "--config.model.hidden=16", "--config.model.n_blocks=1", "--config.model.num_scales=50",
            "--config.eval.num_samples=64", "--config.eval.rtol=1e-3", "--config.eval.atol=1e-3",
            "--config.eval.true_nll_samples=20000", "--config.sampling.num_samples=32",
            "--config.sampling.batch_size=32"]




def _cli(workdir: Path, mode: str, *extra: str, config: str = "configs/toy/gmm_vp.py", wait: bool = True):
    cmd = [sys.executable, "main.py", "--config", config, "--workdir", str(workdir), "--mode", mode, *TINY_TOY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _tiny_toy_config(*extra: str):
    """The config the CLI builds from configs/toy/gmm_vp.py, TINY_TOY and ``extra``, built in Python."""
    config = gmm_config()
    for flag in (*TINY_TOY, *extra):
        path, value = flag[len("--config."):].split("=", 1)
        section, name = path.split(".")
        config[section][name] = ast.literal_eval(value)
    config.training.progress_bar = False
    return config


# Enough training for a model a broken trainer cannot fake: 2 000 steps of a small MLP (about 5 s).
# Measured: NLL gap 0.71 +- 0.07 nats and 58% of samples on the support; an untrained network has a
# gap of 9.7 nats and 0% on the support, so the bounds below leave room both ways.
LEARNS = ["--config.data.num_train=20000", "--config.training.batch_size=256", "--config.training.n_iters=2000",
          "--config.training.checkpoint_freq=1000", "--config.training.snapshot_freq=2000",
          "--config.training.eval_freq=1000", "--config.training.log_freq=100", "--config.model.hidden=64",
          "--config.model.n_blocks=2", "--config.optim.lr=2e-3", "--config.optim.warmup=100",
          "--config.model.ema_rate=0.99", "--config.eval.num_samples=256", "--config.eval.batch_size=256"]
GAP_BOUND = 2.0            # nats; measured 0.71, untrained 9.7
SUPPORT_FLOOR = 0.3        # measured 0.58, untrained 0.0


def test_train_from_the_command_line_then_eval_and_sample(tmp_path):
    _ok(_cli(tmp_path, "train", *LEARNS))
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("*.pt"))] == [
        "checkpoint_00001000.pt", "checkpoint_00002000.pt"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["training"]["n_iters"] == 2000 and saved["model"]["hidden"] == 64     # overrides resolved
    assert (tmp_path / "snapshots" / "samples_00002000.png").is_file()
    assert any("loss" in json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())

    config = _tiny_toy_config(*LEARNS)
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


def _tiny_digits():
    config = digits_config()
    config.data.num_train = 128
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq, t.checkpoint_freq, t.snapshot_freq = 16, 4, 2, 2, 2, 4
    t.snapshot_num_samples, t.progress_bar, t.tensorboard = 4, False, False
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_scales = 8, (1, 2), 1, (4,), 50
    config.eval.num_samples, config.eval.batch_size, config.eval.rtol, config.eval.atol = 8, 8, 1e-2, 1e-2
    config.sampling.num_samples, config.sampling.batch_size = 6, 4
    return config


def test_images_train_eval_sample_in_process(tmp_path):
    config = _tiny_digits()
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


@pytest.fixture
def parsed_flags(monkeypatch):
    """Parse a command line into absl's FLAGS as ``app.run`` would (config_flags reads the overrides
    from ``sys.argv``) and undo it afterwards."""
    def parse(*argv):
        monkeypatch.setattr(sys, "argv", ["main.py", *argv])
        flags.FLAGS(sys.argv)
    yield parse
    flags.FLAGS.unparse_flags()


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
        main.run(_tiny_digits(), tmp_path, "fit")


def test_a_typo_in_an_override_is_one_line_naming_the_field(tmp_path):
    result = _cli(tmp_path, "train", "--config.training.foo=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "config.training.foo is not a config field" in lines[0], result.stderr
    assert "'n_iters'" in lines[0]                                     # the fields it could have meant
    result = _cli(tmp_path, "train", "--config.sampling.order=7")       # checked before any work starts
    assert result.returncode != 0 and "config.sampling.order must be one of [1, 2, 3], got 7" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def _wait_for_training(workdir: Path, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    metrics = workdir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(tmp_path):
    # no periodic checkpoint or snapshot may land before the signal: the only checkpoint is SIGTERM's
    proc = _cli(tmp_path, "train", "--config.training.n_iters=1000000", "--config.training.checkpoint_freq=100000",
                "--config.training.snapshot_freq=100000", wait=False)
    _wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]             # 128 + SIGTERM: a pre-empted job
    assert "SIGTERM received: checkpoint written at step" in stderr
    (step, _), = list_checkpoints(tmp_path / "checkpoints")
    assert 2 <= step < 1_000_000
    config = _tiny_toy_config()
    config.training.n_iters = step + 2
    assert main.run(config, tmp_path, "train") == {"step": step + 2, "stopped_by_signal": False, "signal": None}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records if "event" in r] == ["stopped", "finished"]
    assert records[-1]["step"] == step + 2
