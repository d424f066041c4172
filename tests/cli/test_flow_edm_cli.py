"""Flow matching and EDM through ``main.py`` as users run them: each new config trains, evaluates and
samples (a few steps, tiny networks), and the process, loss, parameterisation and sampler it names are
the ones that run."""
import importlib
import math

import numpy as np
import pytest

from scoresde.cli import main
from scoresde.cli.factory import options_from_config


def shrink(config):
    config.data.num_train = 256 if config.data.dataset in ("gmm", "checkerboard") else 64
    t = config.training
    t.batch_size, t.n_iters, t.log_freq, t.eval_freq = 16, 3, 1, 3
    t.checkpoint_freq, t.snapshot_freq, t.snapshot_num_samples = 3, 3, 4
    t.progress_bar, t.tensorboard = False, False
    m = config.model
    if m.name == "mlp":
        m.hidden, m.n_blocks = 16, 1
    else:
        m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, (1,), 1, ()
    m.num_scales = 50
    e = config.eval
    e.num_samples, e.batch_size, e.rtol, e.atol, e.true_nll_samples = 8, 8, 1e-2, 1e-2, 1000
    e.trace = "exact" if config.data.dataset == "gmm" else "rademacher"
    s = config.sampling
    s.num_samples, s.batch_size, s.steps = 8, 8, 4
    return config


@pytest.mark.parametrize("name, sde, loss, sampler", [
    ("toy.gmm_flow", "rectified_flow", "flow", "fast"),
    ("toy.gmm_edm", "edm", "edm", "edm"),
    ("digits.ddpmpp_flow", "rectified_flow", "flow", "fast"),
    ("digits.ddpmpp_edm", "edm", "edm", "edm"),
])
def test_new_configs_train_eval_and_sample(tmp_path, name, sde, loss, sampler):
    config = shrink(importlib.import_module(f"configs.{name}").get_config())
    options = options_from_config(config)
    assert (options.sde.name, options.loss.name, options.sampler.method) == (sde, loss, sampler)
    assert main.run(config, tmp_path, "train")["step"] == 3
    metrics = main.run(config, tmp_path, "eval")
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics.get("nll", metrics.get("bpd")))
    info = main.run(config, tmp_path, "sample")
    samples = np.load(tmp_path / "samples" / "samples.npz")["samples"]
    assert info["nonfinite_samples"] == 0 and len(samples) == 8
    if sampler == "edm":
        assert info["nfe_per_batch"] == 2 * 4 - 1                # Heun: 2N - 1 (Karras et al. 2022, Alg. 1)
