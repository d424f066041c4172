"""Multi-process training, evaluation and sampling on a real gloo group (CPU), against one process.

One module-scoped set of runs on the tiny 2-D mixture config (MLP hidden 16, 1 block, global batch 16,
6 steps, checkpoints at 3 and 6) feeds all tests:

- ``ref``: one process, in this process;
- ``two``: two processes from step 0, rank 1 given its own (empty) work directory so that any file it
  wrote would show, and the model and EMA compared across ranks at every checkpoint.

Tolerances: W processes differ from one only by the rounding of DDP's gradient all-reduce (a sum of
per-rank means instead of one mean), so weights agree to ``ATOL`` (float32, 6 Adam steps; the measured
difference is 6e-8); within one run the ranks agree bit-for-bit.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.tiny import tiny_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.cli import main
from dist_utils import run_ranks
from scoresde.run import checkpoint as ckpt
from scoresde.train import loop as trainer
from scoresde.run.distributed import DistContext, all_gather_cat, cleanup, init_distributed
from scoresde.cli.factory import options_from_config
from scoresde.evaluate.heldout import log_likelihoods
from scoresde.run.inference import load_for_inference
from scoresde.data.pipeline import load_data
from scoresde.data.streams import Stream, generator

ATOL = 1e-6
STEPS, HALF = 6, 3


# 12 items per likelihood batch: 2 ranks and 1 process solve the same batches (adaptive steps depend on
# the batch), so per-item values agree to float rounding
DDP = {"device": "cpu", "data.num_train": 256, "training.batch_size": 16, "training.eval_freq": 3,
       "training.checkpoint_freq": HALF, "training.keep_last": 5, "eval.num_samples": 24, "eval.batch_size": 12,
       "sampling.steps": 50, "sampling.num_samples": 9}


def ddp_config(n_iters: int = STEPS, gpu_flags: bool = False):
    """``DDP`` for ``n_iters`` steps; ``gpu_flags`` turns on the CUDA-only switches."""
    return tiny_config(**DDP, **{"training.n_iters": n_iters, "training.channels_last": gpu_flags,
                                 "training.tf32": gpu_flags})


# ---------------------------------------------------------------------------------------- workers
def _same_on_all_ranks(run) -> None:
    shadow = run.ema.state_dict()["shadow"]
    flat = torch.cat([p.detach().flatten() for p in run.model.parameters()] + [s.flatten() for s in shadow.values()])
    every = all_gather_cat(flat[None], run.ctx)
    assert all(torch.equal(every[0], row) for row in every), "model / EMA differ between ranks"


def _checked(save):
    def save_after_check(run):
        _same_on_all_ranks(run)
        save(run)
    return save_after_check


def _train_worker(rank, world_size, config, workdir, other_ranks_dir):
    """``train`` on this rank; with ``other_ranks_dir``, ranks > 0 get their own empty work directory
    (a fresh run reads nothing there), so whatever they write would show up in it."""
    torch.set_num_threads(1)
    trainer.save_checkpoint = _checked(trainer.save_checkpoint)
    if other_ranks_dir is not None and rank > 0:
        workdir = Path(other_ranks_dir) / f"rank{rank}"
    ctx = init_distributed("cpu")
    try:
        assert trainer.train(options_from_config(config), workdir, ctx)["step"] == config.training.n_iters
    finally:
        cleanup(ctx)


def _infer_worker(rank, world_size, config, workdir, out):
    """``--mode sample`` and ``--mode eval`` on one process group (as under torchrun), then the
    per-item log-likelihoods."""
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        options = options_from_config(config)
        main.MODES["sample"](options, workdir, ctx)
        main.MODES["eval"](options, workdir, ctx)
        torch.save(_per_item_logp(config, workdir, ctx), Path(out) / f"logp_{rank}.pt")
    finally:
        cleanup(ctx)


def _per_item_logp(config, workdir, ctx) -> torch.Tensor:
    options = options_from_config(config)
    inf = load_for_inference(options, workdir, ctx)
    spec = load_data(options.data, options.seed, with_train=False)
    logp, _ = log_likelihoods(inf.sde, inf.score_fn, spec.test, spec, options.eval,
                              generator=generator(config.seed, Stream.LIKELIHOOD, ctx.rank, ctx.device), ctx=ctx)
    return logp


# ---------------------------------------------------------------------------------------- helpers
def _state(workdir: Path, step: int) -> dict:
    return ckpt.read_checkpoint(ckpt.checkpoint_path(workdir / "checkpoints", step))


def _assert_close_states(a: dict, b: dict, atol: float = ATOL) -> None:
    assert a["step"] == b["step"] and a["loader"] == b["loader"]
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=0, atol=atol), key
    for key in a["ema"]["shadow"]:
        assert torch.allclose(a["ema"]["shadow"][key], b["ema"]["shadow"][key], rtol=0, atol=atol), key


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"])


def _copy_checkpoint(src: Path, dst: Path, step: int) -> Path:
    (dst / "checkpoints").mkdir(parents=True)
    path = ckpt.checkpoint_path(src / "checkpoints", step)
    for p in (path, ckpt.checksum_path(path)):
        shutil.copy2(p, dst / "checkpoints" / p.name)
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    trainer.train(options_from_config(ddp_config()), root / "ref")
    run_ranks(_train_worker, 2, ddp_config(), root / "two", root / "other_ranks")
    return root


# ---------------------------------------------------------------------------------------- tests
def _initial_weights(config) -> dict:
    """The trainable weights training starts from (the trainer seeds the initialisation with config.seed)."""
    torch.manual_seed(config.seed)
    network = options_from_config(config).network.build((2,))
    return {name: p.detach() for name, p in network.named_parameters() if p.requires_grad}


def test_two_ranks_reach_the_weights_of_one(runs):
    ref, two = _state(runs / "ref", STEPS), _state(runs / "two", STEPS)
    _assert_close_states(ref, two)
    assert _max_diff(ref, two) < ATOL
    # and the weights moved: Adam moves every weight by about lr = 1e-3 per update, 6 updates, 2 of
    # them warming up, so each tensor's largest change is well above 1e-3 -- far above ATOL
    init = _initial_weights(ddp_config())
    assert len(init) == len(two["model"]) - 1                          # all but the fixed Fourier features
    assert min(float((two["model"][k] - init[k]).abs().max()) for k in init) > 1e-3
    assert ref["loader"] == {"epoch": 0, "position": STEPS * 16, "seed": 42, "num_items": 256}
    losses = [[json.loads(line).get("loss") for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("ref", "two")]
    assert np.allclose([v for v in losses[0] if v is not None], [v for v in losses[1] if v is not None], atol=1e-5)


def test_only_rank_zero_writes(runs):
    assert not (runs / "other_ranks").exists(), f"rank 1 wrote {sorted((runs / 'other_ranks').rglob('*'))}"
    files = sorted(str(p.relative_to(runs / "two")) for p in (runs / "two").rglob("*"))
    assert files == [".lock", "checkpoints", "checkpoints/checkpoint_00000003.pt", "checkpoints/checkpoint_00000003.pt.sha256",
                     "checkpoints/checkpoint_00000006.pt", "checkpoints/checkpoint_00000006.pt.sha256",
                     "config.json", "loss_curve.png", "metrics.jsonl"]


def test_resume_across_world_sizes(runs, tmp_path):
    """A checkpoint written by 2 ranks at step 3 resumes with 1 and with 4 processes to the weights
    of the uninterrupted one-process run (the 1-process checkpoint also resumes on 2)."""
    ref = _state(runs / "ref", STEPS)
    one = _copy_checkpoint(runs / "two", tmp_path / "2to1", HALF)
    trainer.train(options_from_config(ddp_config()), one)
    _assert_close_states(ref, _state(one, STEPS))
    four = _copy_checkpoint(runs / "two", tmp_path / "2to4", HALF)
    run_ranks(_train_worker, 4, ddp_config(), four, None)
    _assert_close_states(ref, _state(four, STEPS))


def test_batch_not_divisible_by_world_size(tmp_path):
    with pytest.raises(ValueError, match=r"config\.training\.batch_size=16 .* world size 3"):
        trainer.train(options_from_config(ddp_config()), tmp_path, DistContext(rank=0, world_size=3))
    assert not (tmp_path / "checkpoints").exists()


def test_gpu_flags_leave_the_cpu_path_unchanged(runs, tmp_path, caplog):
    tf32 = torch.backends.cuda.matmul.allow_tf32
    with caplog.at_level("INFO", logger="scoresde.run.runtime"):
        trainer.train(options_from_config(ddp_config(gpu_flags=True)), tmp_path)
    ref, flagged = _state(runs / "ref", STEPS), _state(tmp_path, STEPS)
    assert all(torch.equal(ref["model"][k], flagged["model"][k]) for k in ref["model"])
    assert torch.backends.cuda.matmul.allow_tf32 == tf32
    message = "training.channels_last, training.tf32"
    assert any(message in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_sample_and_eval_are_sharded_and_gathered(runs, tmp_path):
    config = ddp_config()
    two = _copy_checkpoint(runs / "ref", tmp_path / "two", STEPS)
    run_ranks(_infer_worker, 2, config, two, tmp_path)
    samples = np.load(two / "samples" / "samples.npz")["samples"]
    assert samples.shape == (9, 2) and np.isfinite(samples).all()
    assert json.loads((two / "samples" / "info.json").read_text())["num_samples"] == 9
    assert not np.allclose(samples[:4], samples[5:])                  # each rank its own draws

    one = _copy_checkpoint(runs / "ref", tmp_path / "one", STEPS)
    config.sampling.num_samples = 5                                   # rank 0's share of 9
    first = main.run(config, one, "sample")
    assert first["num_samples"] == 5
    assert np.allclose(np.load(one / "samples" / "samples.npz")["samples"], samples[:5], atol=1e-6)

    logp_two = [torch.load(tmp_path / f"logp_{r}.pt") for r in range(2)]
    assert torch.equal(logp_two[0], logp_two[1])                      # every rank gets all of them
    logp_one = _per_item_logp(config, one, DistContext())
    assert logp_two[0].shape == (24,) and torch.allclose(logp_two[0], logp_one, rtol=0, atol=1e-5)
    metrics = json.loads((two / "eval" / "metrics.json").read_text())
    assert metrics["num_samples"] == 24
    assert metrics["nll"] == pytest.approx(float(-logp_one.mean()), abs=1e-5)


def test_batch_rows_do_not_depend_on_the_world_size(tmp_path, monkeypatch):
    """Images: the dequantisation, flips and loss noise of rank r are rows of the 1-process draws."""
    monkeypatch.setattr(trainer, "barrier", lambda ctx: None)
    monkeypatch.setattr(trainer, "wrap_model", lambda model, ctx: model)     # no process group here
    config = digits_config()
    config.data.num_train, config.data.random_flip, config.training.batch_size = 64, True, 8
    m = config.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions, m.num_scales = 8, (1,), 1, (), 50
    config.training.tensorboard = False
    drawn = []
    for world in (1, 2):
        runs_ = [trainer.setup_run(options_from_config(config), tmp_path / f"{world}_{r}", DistContext(rank=r, world_size=world))
                 for r in range(world)]
        xs = [trainer.next_batch(run)[0] for run in runs_]
        noises = [trainer.loss_noise(run, x) for run, x in zip(runs_, xs)]
        drawn.append((torch.cat(xs), {k: torch.cat([n[k] for n in noises]) for k in noises[0]}))
    (x1, n1), (x2, n2) = drawn
    assert torch.equal(x1, x2) and set(n1) == set(n2) == {"t", "z"}
    assert all(torch.equal(n1[k], n2[k]) for k in n1)
