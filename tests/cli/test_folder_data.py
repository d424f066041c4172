"""An image folder through the command line, in process: 200 small PNGs in two class folders (two
distinguishable patterns), class-conditional training with label dropout, then eval (bits/dim),
sample, classifier-free guided sample, inpaint and colorize on the trained model."""
import json
import math

import numpy as np
import pytest
from PIL import Image

from scoresde.cli import main
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config

SIZE, PER_CLASS = 8, 100


def pattern(label: int, rng: np.random.RandomState) -> np.ndarray:
    """Class 0: dark left half, bright right half (reddish); class 1: bright top half, dark bottom (bluish)."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float64)
    if label == 0:
        image[:, SIZE // 2:] = (230, 120, 60)
    else:
        image[:SIZE // 2] = (60, 120, 230)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def write_folder(root, per_class: int = PER_CLASS, seed: int = 0):
    rng = np.random.RandomState(seed)
    for label, name in enumerate(("horizontal", "vertical")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(pattern(label, rng)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("folder")
    root = write_folder(base / "images")
    config = digits_config()
    config.device = "cpu"
    d = config.data
    d.dataset, d.root, d.image_size, d.channels, d.labels_from_folders = "folder", str(root), SIZE, 3, True
    d.heldout_fraction = 0.1
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq, t.checkpoint_freq, t.snapshot_freq = 16, 4, 2, 2, 2, 4
    t.snapshot_num_samples, t.progress_bar, t.tensorboard, t.label_dropout = 4, False, False, 0.2
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_scales, m.num_classes = 8, (1, 2), 1, (4,), 50, 2
    config.eval.num_samples, config.eval.batch_size, config.eval.rtol, config.eval.atol = 8, 8, 1e-2, 1e-2
    config.sampling.num_samples, config.sampling.batch_size = 4, 4
    assert main.run(config, base / "run", "train")["step"] == 4
    return config, base / "run", root


def test_train_stores_class_names_and_caches_under_the_folder(trained):
    import torch
    config, workdir, root = trained
    state = torch.load(sorted((workdir / "checkpoints").glob("*.pt"))[-1], map_location="cpu", weights_only=True)
    assert state["meta"]["class_names"] == ["horizontal", "vertical"]
    assert state["meta"]["shape"] == [3, SIZE, SIZE] and state["meta"]["num_classes"] == 2
    caches = list((root / ".scoresde_cache").glob("folder-*.npy"))
    assert len(caches) == 1 and np.load(caches[0], mmap_mode="r").shape == (2 * PER_CLASS, 3, SIZE, SIZE)


def test_eval_reports_bits_per_dim(trained):
    config, workdir, _ = trained
    metrics = main.run(config, workdir, "eval")
    assert math.isfinite(metrics["bpd"]) and metrics["bpd"] > 0


def test_sample_and_cfg_sample(trained, tmp_path):
    config, workdir, _ = trained
    main.run(config, workdir, "sample", outdir=tmp_path / "plain")
    samples = np.load(tmp_path / "plain" / "samples.npz")["samples"]
    assert samples.shape == (4, 3, SIZE, SIZE) and samples.min() >= 0 and samples.max() <= 1
    guided = config.copy_and_resolve_references()
    guided.sampling.guidance, guided.sampling.label, guided.sampling.guidance_scale = "cfg", "1", 2.0
    main.run(guided, workdir, "sample", outdir=tmp_path / "cfg")
    assert np.load(tmp_path / "cfg" / "samples.npz")["samples"].shape == (4, 3, SIZE, SIZE)
    info = json.loads((tmp_path / "cfg" / "info.json").read_text())
    assert info["guidance"] == "cfg" and info["label"] == 1 and info["guidance_scale"] == 2.0


def test_inpaint_and_colorize(trained, tmp_path):
    config, workdir, _ = trained
    main.run(config, workdir, "inpaint", outdir=tmp_path / "inpaint")
    npz = np.load(tmp_path / "inpaint" / "inpaint.npz")
    known = npz["mask"].astype(bool)
    assert np.array_equal(npz["completed"][known], npz["original"][known])
    main.run(config, workdir, "colorize", outdir=tmp_path / "colorize")
    assert np.load(tmp_path / "colorize" / "colorize.npz")["completed"].shape[1:] == (3, SIZE, SIZE)
