"""Command line: train, evaluate or sample a score-based model from a config file.

    python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode train \\
        [--config.training.n_iters=200 ...]

``--mode train`` writes ``<workdir>/checkpoints/`` (and resumes from the newest), ``metrics.jsonl`` and
``snapshots/``; ``--mode eval`` writes ``<workdir>/eval/metrics.json``; ``--mode sample`` writes
``<workdir>/samples/samples.npz`` and a PNG. For several processes launch with ``torchrun``.
"""
from __future__ import annotations

from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from training.checkpoint import atomic_write_text
from training.distributed import DistContext, cleanup, init_distributed
from training.evaluate import EVAL_DIR, evaluate
from training.factory import validate_config
from training.sampling import SAMPLES_DIR, sample
from training.trainer import train

MODES = {"train": train, "eval": evaluate, "sample": sample}
# where each mode saves the resolved config it ran with
CONFIG_FILES = {"train": "config.json", "eval": f"{EVAL_DIR}/config.json", "sample": f"{SAMPLES_DIR}/config.json"}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/toy/gmm_vp.py; "
                                "override any field with --config.<section>.<field>=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, evaluations and samples.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def save_config(config: ml_collections.ConfigDict, workdir: str | Path, mode: str, ctx: DistContext) -> Path:
    """Write the resolved config as JSON into the work directory (rank 0)."""
    path = Path(workdir) / CONFIG_FILES[mode]
    if ctx.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, config.to_json(indent=2, sort_keys=True) + "\n")
    return path


def quiet_other_ranks(ctx: DistContext) -> None:
    """Under torchrun only rank 0 logs progress; the other ranks log warnings and errors only."""
    if not ctx.is_main:
        logging.set_verbosity(logging.WARNING)


def run(config: ml_collections.ConfigDict, workdir: str | Path, mode: str):
    """Validate ``config``, then run ``mode`` in this process group (a world of one without torchrun)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    validate_config(config)
    ctx = init_distributed(config.device)
    quiet_other_ranks(ctx)
    try:
        save_config(config, workdir, mode, ctx)
        return MODES[mode](config, workdir, ctx)
    finally:
        cleanup(ctx)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        validate_config(FLAGS.config)
    except ValueError as err:
        raise app.UsageError(f"invalid config: {err}") from err
    logging.info("%s with %s in %s", FLAGS.mode, config_flags.get_config_filename(FLAGS["config"]), FLAGS.workdir)
    result = run(FLAGS.config, FLAGS.workdir, FLAGS.mode)
    logging.info("%s done: %s", FLAGS.mode, result)


if __name__ == "__main__":
    app.run(main)
