"""``model.pretrained``: ``eval`` and ``sample`` of a score_sde_pytorch checkpoint and of a diffusers
``save_pretrained`` directory, through ``main.run``, on 8x8 digits.

The importers themselves are proven against score_sde's and diffusers' own code in
``test_score_sde_import.py`` and ``test_diffusers_interop.py``; here: the command line builds the same
score the library does (the eval's bits/dim equals the library's on the same items and draws), writes
its results into a work directory it may create, and refuses what cannot fit in one line.
"""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.cli import main
from scoresde import models
from scoresde import samplers
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.models.score_sde_import import build_score_sde_unet, from_score_sde, score_sde_parameter_map
from scoresde.data.datasets import scaler_log_det
from scoresde.cli.factory import options_from_config
from scoresde.data.pipeline import load_data, to_model_space
from scoresde.data.streams import Stream, generator

FIXTURE_CONFIG = Path(__file__).resolve().parents[1] / "fixtures" / "score_sde_ddpmpp_vp.json"


def score_sde_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A random-weight score_sde checkpoint of an 8x8 grey DDPM++ (the fixture's settings, resized), saved
    the way score_sde saves one ('module.'-prefixed names, NIN weights as (in, out), EMA shadows), and its
    config as JSON."""
    config = json.loads(FIXTURE_CONFIG.read_text())["config"]
    config["data"].update(image_size=8, num_channels=1)
    config["model"]["attn_resolutions"] = [4]
    torch.manual_seed(0)
    net = build_score_sde_unet(config)
    ours = net.state_dict()
    state, shadows = {}, []
    for theirs, name, nin, trainable in score_sde_parameter_map(net):
        tensor = ours[name].reshape(ours[name].shape[:2]).t() if nin else ours[name]
        state[f"module.{theirs}"] = tensor.clone()
        if trainable:
            shadows.append(tensor.clone())
    path, config_path = tmp_path / "checkpoint_1.pth", tmp_path / "config.json"
    torch.save({"model": state, "ema": {"shadow_params": shadows}, "step": 1}, path)
    config_path.write_text(json.dumps(config))
    return path, config_path


def library_bpd(config, sde, score_fn) -> float:
    """The library's bits/dim of the eval's items, with the eval's dequantisation and probes (its streams):
    the command line must give the same number (to float32 round-off of an adaptive ODE)."""
    options = options_from_config(config)
    spec = load_data(options.data, options.seed, with_train=False)
    gen = generator(options.seed, Stream.LIKELIHOOD)
    x = to_model_space(spec.test, spec, gen, train=False)
    logp, _, _ = samplers.log_likelihood(sde, score_fn, x, generator=gen, **options.eval.likelihood_kwargs)
    return float(samplers.bits_per_dim(logp.double(), spec.dim, num_levels=spec.num_levels,
                                       log_det=scaler_log_det(True, spec.dim)).mean())


def pretrained_digits(pretrained: Path, pretrained_config: Path | None = None):
    config = digits_config()
    config.device = "cpu"
    config.data.centered = True
    config.model.pretrained = str(pretrained)
    config.model.pretrained_config = str(pretrained_config or "")
    config.training.progress_bar = False
    e = config.eval
    e.num_samples, e.batch_size, e.rtol, e.atol, e.trace = 8, 8, 1e-3, 1e-3, "rademacher"
    s = config.sampling
    s.method, s.steps, s.num_samples, s.batch_size = "fast", 5, 8, 8
    return config


def test_score_sde_checkpoint_eval_and_sample(tmp_path):
    path, config_path = score_sde_checkpoint(tmp_path)
    config = pretrained_digits(path, config_path)
    workdir = tmp_path / "new_workdir"           # created for the results: nothing to read there
    main.run(config, workdir, "eval")
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    sde, score_fn = from_score_sde(path, json.loads(config_path.read_text()))
    assert metrics["bpd"] == pytest.approx(library_bpd(config, sde, score_fn), rel=1e-4)
    main.run(config, workdir, "sample")
    assert np.load(workdir / "samples" / "samples.npz")["samples"].shape == (8, 1, 8, 8)


def test_pretrained_errors_are_one_line(tmp_path):
    path, config_path = score_sde_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="pretrained_config"):
        main.run(pretrained_digits(path), tmp_path / "w", "eval")
    config = pretrained_digits(path, config_path)
    config.data.centered = False
    with pytest.raises(ValueError, match="centered"):
        main.run(config, tmp_path / "w", "eval")
    with pytest.raises(ValueError, match="--mode train"):
        main.run(pretrained_digits(path, config_path), tmp_path / "w", "train")
    with pytest.raises(ValueError, match="neither a diffusers directory nor a score_sde"):
        main.run(pretrained_digits(tmp_path / "missing.pth", config_path), tmp_path / "w", "eval")


def test_diffusers_directory_eval_and_sample(tmp_path):
    diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed "
                                                        "(pip install -e '.[diffusers]')")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    pipeline = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=1000))
    pipeline.save_pretrained(tmp_path / "pipe")
    config = pretrained_digits(tmp_path / "pipe")
    workdir = tmp_path / "run"
    main.run(config, workdir, "eval")
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
    sde, score_fn, _, _ = models.load_diffusers_dir(tmp_path / "pipe", clip_sample=False)
    assert metrics["likelihood_nfe"] > 0
    assert metrics["bpd"] == pytest.approx(library_bpd(config, sde, score_fn), rel=1e-4)
    main.run(config, workdir, "sample")
    assert np.load(workdir / "samples" / "samples.npz")["samples"].shape == (8, 1, 8, 8)
    wrong = copy.deepcopy(config)
    wrong.data.centered = False
    with pytest.raises(ValueError, match="centered=True"):
        main.run(wrong, workdir, "eval")
