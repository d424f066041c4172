"""Improved DDPM through the command line in process: the hybrid config trains, evaluates its bound with
the learned variance and samples on a respaced chain; the importance-sampled vlb loss resumes exactly;
bad values name their field."""
import json
import math

import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.cli.factory import options_from_config
from scoresde.cli.main import run
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer

# the toy mixture on a 5-level cosine chain: the level sampler's history (10 terms a level) fills at step 1
VLB_TOY = {"training.sde": "cosine_vpsde", "training.loss": "vlb", "training.continuous": False,
           "training.importance_sampling": True, "training.likelihood_weighting": False, "model.learn_variance": True, "model.num_scales": 5,
           "model.embedding_type": "positional", "training.checkpoint_freq": 3, "training.keep_last": 5,
           "sampling.method": "ddpm",
           "sampling.steps": 5}


def _latest(workdir):
    return ckpt.read_checkpoint(ckpt.list_checkpoints(workdir / "checkpoints")[-1][1])


def test_vlb_importance_sampling_resume_equals_an_uninterrupted_run(tmp_path):
    """6 steps at once, or 3 then a resume to 6: the same weights and the same level-sampler history
    (exact equality: every draw comes from seeded streams and the history is checkpointed)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    trainer.train(options_from_config(tiny_config(**VLB_TOY, **{"training.n_iters": 6})), straight)
    trainer.train(options_from_config(tiny_config(**VLB_TOY, **{"training.n_iters": 3})), resumed)
    trainer.train(options_from_config(tiny_config(**VLB_TOY, **{"training.n_iters": 6})), resumed)
    a, b = _latest(straight), _latest(resumed)
    assert a["step"] == b["step"] == 6
    assert bool((a["level_sampler"]["counts"] == 10).all())      # warmed up: levels were importance-sampled
    for key in ("values", "counts"):
        assert torch.equal(a["level_sampler"][key], b["level_sampler"][key])
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_hybrid_digits_trains_evaluates_and_samples(tmp_path):
    """The digits hybrid config at tiny sizes: eval's VLB uses the learned variance (finite bits/dim);
    sampling with method ddpm on 10 kept levels of 50 writes finite samples with 10 score evaluations."""
    config = tiny_config("digits/ddpm_hybrid", **{"training.n_iters": 2, "sampling.steps": 10,
                                                   "eval.bound_items": 4, "eval.likelihood": False})
    run(config, str(tmp_path), "train")
    run(config, str(tmp_path), "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "vlb" in text and "NaN" not in text
    respaced = tiny_config("digits/ddpm_hybrid", **{"training.n_iters": 2, "eval.bound_items": 4,
                                                     "eval.likelihood": False, "eval.chain_steps": 5, "sampling.steps": 10})
    run(respaced, str(tmp_path), "eval")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["vlb_nfe"] == 5 and math.isfinite(metrics["vlb_bpd"])
    run(config, str(tmp_path), "sample")
    import numpy as np
    samples = np.load(tmp_path / "samples" / "samples.npz")["samples"]
    assert samples.shape[0] == config.sampling.num_samples and np.isfinite(samples).all()


@pytest.mark.parametrize("overrides, message", [
    ({"training.loss": "hybrid", "training.continuous": False, "training.likelihood_weighting": False,
      "training.importance_sampling": False},
     r"config\.training\.loss='hybrid' trains a learned variance: it needs model\.learn_variance=True"),
    ({"model.learn_variance": True},
     r"config\.model\.learn_variance=True needs training\.loss in \['hybrid', 'vlb'\]"),
    ({"sampling.ddpm_variance": "learned"},
     r"config\.sampling\.ddpm_variance must be one of \['posterior', 'forward'\], got 'learned'"),
    ({"training.vlb_weight": -1.0}, r"config\.training\.vlb_weight must be a number in \[0\.0, inf\)"),
    ({"eval.bounds": "vlb", "eval.chain_steps": 1}, r"config\.eval\.chain_steps=1 must be 0 \(all levels\) or between 2"),
    ({"sampling.method": "ddpm", "sampling.steps": 51},
     r"config\.sampling\.steps=51 \(sampling\.method 'ddpm'.*model\.num_scales=50"),
    ({"training.importance_sampling": True, "training.loss": "ddpm", "training.continuous": False,
      "training.likelihood_weighting": False},
     r"config\.training\.importance_sampling applies to training\.loss 'dsm' or 'vlb'"),
])
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        options_from_config(tiny_config(**overrides))
