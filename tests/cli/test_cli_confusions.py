"""Small confusions on the command line and in the pictures: a missing path says "does not exist",
pretrained weights are called so, the likelihood has its own labelled panel, grids are readable."""
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from PIL import Image

from cli.test_pretrained_cli import pretrained_digits, score_sde_checkpoint    # tests/ is on the path
from scoresde.cli import main
from scoresde.data.pipeline import spec_from_meta
from scoresde.run import plots
from scoresde.run.generation import sample_picture
from scoresde.run.inference import Inference


@pytest.fixture
def parsed_flags(monkeypatch):
    """Parse a command line into absl's FLAGS as ``app.run`` would, and undo it afterwards."""
    def parse(*argv):
        monkeypatch.setattr(sys, "argv", ["main.py", *argv])
        flags.FLAGS(sys.argv)
    yield parse
    flags.FLAGS.unparse_flags()


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("mode", ["eval", "sample"])
def test_a_missing_work_directory_does_not_exist_and_is_no_config_error(tmp_path, parsed_flags, capsys, mode):
    parsed_flags("--config=configs/toy/gmm_vp.py", f"--workdir={tmp_path / 'nothing'}", f"--mode={mode}")
    with pytest.raises(SystemExit) as code:
        main.main(["main.py"])
    line = last_error(capsys)
    assert code.value.code == 2
    assert line == f"main.py: error: --workdir {tmp_path / 'nothing'} does not exist; train a model there first (--mode train)"
    assert not (tmp_path / "nothing").exists()


def test_a_work_directory_below_a_file_is_no_config_error(tmp_path, parsed_flags, capsys):
    (tmp_path / "a_file").write_text("")
    parsed_flags("--config=configs/toy/gmm_vp.py", f"--workdir={tmp_path / 'a_file' / 'run'}", "--mode=train")
    with pytest.raises(SystemExit) as code:
        main.main(["main.py"])
    line = last_error(capsys)
    assert code.value.code == 2 and "invalid config" not in line and "is a file, not a directory" in line


def test_a_missing_pretrained_path_does_not_exist(tmp_path, parsed_flags, capsys):
    missing = tmp_path / "path" / "to" / "ddpm-cifar10-32"
    parsed_flags("--config=configs/digits/ddpmpp_vp.py", f"--workdir={tmp_path / 'out'}", "--mode=sample",
                 f"--config.model.pretrained={missing}", "--config.data.centered=True", "--config.device=cpu")
    with pytest.raises(SystemExit) as code:
        main.main(["main.py"])
    line = last_error(capsys)
    assert code.value.code == 1
    assert line.startswith(f"main.py: error: config.model.pretrained={str(missing)!r} does not exist")


# ---------------------------------------------------------------------------------------- pretrained weights
def test_pretrained_weights_are_named_by_their_path_not_a_step():
    common = dict(sde=None, model=None, score_fn=None, data=None, step=0, checkpoint=Path("models/ddpm.pth"),
                  trained=None)
    assert Inference(**common, pretrained=True).weights == "pretrained weights from models/ddpm.pth"
    assert Inference(**{**common, "step": 12}).weights == "EMA weights of step 12"


def test_a_pretrained_sample_says_pretrained_weights_in_its_log_and_caption(tmp_path, caplog):
    path, config_path = score_sde_checkpoint(tmp_path)
    config = pretrained_digits(path, config_path)
    config.sampling.steps, config.sampling.num_samples, config.sampling.batch_size = 2, 4, 4
    captions = []
    real = plots.image_grid

    def image_grid(images, caption="", **kwargs):
        captions.append(caption)
        return real(images, caption=caption, **kwargs)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level(logging.INFO):
        patch.setattr("scoresde.run.generation.image_grid", image_grid)
        main.run(config, tmp_path / "out", "sample")
    assert f"pretrained weights from {path}" in caplog.text and "EMA weights of step" not in caplog.text
    assert captions and captions[0].startswith(f"pretrained weights from {path}, fast sampler")


# ---------------------------------------------------------------------------------------- figures
def drawn_figure(monkeypatch):
    """Keep the matplotlib figure a plot function draws (instead of its PNG bytes)."""
    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    return figures


def test_the_likelihood_has_its_own_panel_with_units_under_a_one_line_title(monkeypatch):
    figures = drawn_figure(monkeypatch)
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 50)] + [{"step": 49, "eval_loss": 0.03},
                                                                      {"step": 49, "bpd": 1.25}]
    plots.loss_curve(records, title="digits, vpsde, ddpmpp", caption="loss: denoising score matching " * 5)
    loss_ax, likelihood_ax = figures[0].axes
    assert loss_ax.get_title() == "digits, vpsde, ddpmpp" and "loss" in loss_ax.get_ylabel()
    assert "bits/dim" in likelihood_ax.get_ylabel() and len(likelihood_ax.lines) == 1
    assert [t.get_text() for t in likelihood_ax.texts] == ["1.25"]             # the value, written
    plots.loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "nll": 0.4}], title="gmm, vpsde, mlp " * 20)
    assert "NLL (nats per sample)" in figures[1].axes[1].get_ylabel()
    assert "\n" not in figures[1].axes[0].get_title()
    plots.loss_curve([{"step": 1, "loss": 2.0}])
    assert len(figures[2].axes) == 1                                           # nothing measured: no panel


def test_write_loss_curve_titles_the_run_in_one_line(tmp_path, monkeypatch):
    from scoresde.cli.factory import options_from_config
    from scoresde.configs.digits.ddpmpp_vp import get_config
    from scoresde.run.workdir import write_loss_curve
    figures = drawn_figure(monkeypatch)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n')
    write_loss_curve(tmp_path, options_from_config(get_config()))
    title = figures[0].axes[0].get_title()
    assert "\n" not in title and title.startswith("digits, ")


def digits(n):
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)


def test_grids_have_at_most_ten_columns_of_readable_tiles():
    assert plots.tile_images(digits(100)).shape[1] == 10 * 9 + 1          # 10 columns of 8 + 1 pixels
    assert plots.tile_images(digits(400)).shape[1] == 10 * 9 + 1
    assert plots.tile_images(digits(36)).shape[1] == 6 * 9 + 1            # fewer: about square
    with Image.open(io.BytesIO(plots.image_grid(digits(100), caption="100 digits"))) as png:
        width, height = png.size
    assert 10 * plots.TILE_PIXELS <= width < 10 * plots.TILE_PIXELS * 1.4     # each digit >= 64 px wide
    assert 10 * plots.TILE_PIXELS <= height


def test_class_grids_show_one_row_per_class_with_at_most_ten(monkeypatch):
    spec = spec_from_meta({"dataset": "digits", "shape": [1, 8, 8], "num_levels": 17, "centered": False,
                           "num_classes": 10})
    shown = []
    monkeypatch.setattr("scoresde.run.generation.image_grid",
                        lambda images, caption="", cols=None, row_labels=None: shown.append((images, cols, caption)))
    sample_picture(digits(10 * 20), spec, "guided", row_labels=[f"class {k}" for k in range(10)])
    images, cols, caption = shown[0]
    assert images.shape[0] == 100 and cols == 10 and "first 10 of each row" in caption
