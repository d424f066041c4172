"""Command line: train, evaluate or sample a score-based model from a config file.

    python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode train \\
        [--config.training.n_iters=200 ...]

``--mode train`` writes ``<workdir>/checkpoints/`` (and resumes from the newest), ``metrics.jsonl`` and
``snapshots/`` (``--mode distill`` the same for a few-step student of ``distill.teacher_workdir``); ``--mode eval`` writes ``<workdir>/eval/metrics.json``; ``--mode sample`` writes
``<workdir>/samples/samples.npz`` and a PNG; ``--mode inpaint`` / ``colorize`` write
``<workdir>/inpaint/`` / ``colorize/``; ``--mode fid`` writes ``<workdir>/fid/fid.json``;
``--mode train_autoencoder`` trains a latent diffusion first stage like ``train`` and writes
``<workdir>/autoencoder.pt`` (for ``--config.data.first_stage=<workdir>``). For several processes launch with ``torchrun``.

The config stops here: ``scoresde.cli.factory.options_from_config`` validates every field and turns the
config into plain options, which the modes take.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from scoresde.run.distributed import DistContext, cleanup, init_distributed
from scoresde.evaluate.classifier import evaluate_classifier
from scoresde.cli.modes.distill import distill
from scoresde.cli.modes.eval import evaluate
from scoresde.cli.modes.fid import fid
from scoresde.cli.modes.impute import colorize, inpaint
from scoresde.cli.factory import options_from_config
from scoresde.cli.help import config_help, load_config_file
from scoresde.cli.schema import schema_fields, unknown_field
from scoresde.cli.shipped import flag_argv
from scoresde.run.options import RunOptions
from scoresde.cli.modes.sample import sample
from scoresde.train.autoencoder import train_autoencoder
from scoresde.train.loop import train

def evaluate_model(options: RunOptions, workdir: str | Path, ctx: DistContext, outdir: str | Path | None = None) -> dict:
    """``--mode eval``: likelihoods and held-out loss of a score model, or a classifier's accuracy."""
    if options.loss.is_classifier:
        return evaluate_classifier(options, workdir, ctx, outdir=outdir)
    return evaluate(options, workdir, ctx, outdir=outdir)


MODES = {"train": train, "eval": evaluate_model, "sample": sample, "inpaint": inpaint, "colorize": colorize,
         "fid": fid, "distill": distill, "train_autoencoder": train_autoencoder}
# the modes that train in --workdir (and may create it; no --outdir)
TRAINING_MODES = ("train", "distill", "train_autoencoder")
# ml_collections loads config files with the deprecated importlib load_module(): not the user's concern
LATENT_MODES = ("train", "sample", "eval")   # the modes that take data.first_stage
LOAD_MODULE_WARNING = r"the load_module\(\) method is deprecated"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. configs/toy/gmm_vp.py; "
                                "override any field with --config.<section>.<field>=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, evaluations and samples.")
flags.DEFINE_enum("mode", "train", list(MODES), "What to run.")
flags.DEFINE_string("outdir", None, "eval / sample / fid: write results here instead of <workdir>/eval, "
                    "<workdir>/samples or <workdir>/fid (e.g. when the work directory is read-only).")
flags.mark_flags_as_required(["config", "workdir"])


def quiet_other_ranks(ctx: DistContext) -> None:
    """Under torchrun only rank 0 logs progress; the other ranks log warnings and errors only."""
    if not ctx.is_main:
        logging.set_verbosity(logging.WARNING)


def check_workdir(workdir: str | Path, mode: str, pretrained: bool = False) -> None:
    """The work directory must be a directory (or, for ``train``, creatable); eval and sample read an
    existing one and never create it. A path that is not there (or is a file) is no config error: it
    raises ``FileNotFoundError`` (``NotADirectoryError``), which the command line reports as it is."""
    path = Path(workdir)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"--workdir {workdir}: {folder} is a file, not a directory")
    if mode not in TRAINING_MODES and not pretrained and not path.is_dir():
        raise FileNotFoundError(f"--workdir {workdir} does not exist; train a model there first (--mode train)")


def run(config: ml_collections.ConfigDict | RunOptions, workdir: str | Path, mode: str,
        outdir: str | Path | None = None):
    """Run ``mode`` on ``config`` (validated first) in this process group (a world of one without
    torchrun); ``outdir`` redirects the results of eval and sample."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if outdir is not None and mode in TRAINING_MODES:
        raise ValueError(f"--outdir applies to --mode eval, sample, inpaint, colorize and fid; --mode {mode} writes "
                         f"into --workdir")
    options = config if isinstance(config, RunOptions) else options_from_config(config, distill=mode == "distill")
    if mode in TRAINING_MODES and options.network.pretrained is not None:
        raise ValueError(f"config.model.pretrained applies to eval, sample, inpaint, colorize and fid (it replaces the "
                         f"work directory's checkpoints); --mode {mode} trains the config's own network")
    if options.data.first_stage and mode not in LATENT_MODES + ("train_autoencoder",):   # which says why
        raise ValueError(f"--mode {mode} does not take data.first_stage yet (latent diffusion runs --mode "
                         f"{', '.join(LATENT_MODES)}; --mode eval reports its likelihood bound)")
    check_workdir(workdir, mode, pretrained=options.network.pretrained is not None)
    ctx = init_distributed(options.device)
    quiet_other_ranks(ctx)
    try:
        if mode in TRAINING_MODES:
            return MODES[mode](options, workdir, ctx)    # writes <workdir>/config.json once it may train there
        return MODES[mode](options, workdir, ctx, outdir=outdir)
    finally:
        cleanup(ctx)


def exit_status(options: RunOptions, result) -> int:
    """0, or after SIGTERM / SIGINT 128 + the signal (143 / 130: a pre-empted job, as schedulers expect)
    unless ``training.exit_zero_on_signal``."""
    if isinstance(result, dict) and result.get("stopped_by_signal") and not options.train.exit_zero_on_signal:
        return 128 + int(result["signal"])
    return 0


def report(message: str) -> None:
    """One line on stderr (the message's line breaks folded)."""
    print("main.py: error: " + " ".join(message.split()), file=sys.stderr)


def fail(message: str, status: int) -> None:
    report(message)
    sys.exit(status)


def execute(options: RunOptions, workdir: str, mode: str, outdir: str | None = None, verbose: bool = False) -> int:
    """Run ``mode`` and return the exit status: 0, 128 + signal after a pre-emption, or 1 after an
    error, reported in one line (``verbose`` re-raises it for the traceback)."""
    try:
        result = run(options, workdir, mode, outdir)
    except Exception as err:        # noqa: BLE001 -- one line; --verbosity=1 shows the traceback
        if verbose:
            raise
        report(f"{err} ({type(err).__name__}; --verbosity=1 shows the traceback)")
        return 1
    logging.info("%s done: %s", mode, result)
    return exit_status(options, result)


def _unknown_override(argv: list[str]) -> str | None:
    """The first ``--config.<path>=...`` override that names no config field, with the closest field
    ("did you mean n_iters?") and the fields of its section."""
    known = schema_fields()
    for arg in argv[1:]:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        if path not in known:
            return unknown_field(path, known)
    return None


HELP = """
modes (--mode):
  train    train a model in --workdir, resuming from its newest checkpoint (Ctrl-C / SIGTERM checkpoint first)
  train_autoencoder  train a latent diffusion first stage (config.autoencoder) the same way; writes
           <workdir>/autoencoder.pt for --config.data.first_stage=<workdir>
  eval     held-out loss and likelihood (bits/dim or nll, next to what they compare with) of the EMA weights
  sample   draw samples from the EMA weights: samples.npz, a PNG and info.json (class-conditional and guided:
           --config.sampling.label=3|all --config.sampling.guidance=cfg|classifier --config.sampling.guidance_scale=2)
  inpaint  complete held-out items (or sampling.inpaint_data) with sampling.mask missing: a PNG sheet and .npz
  colorize colour images from their grey version (3-channel data)
  distill  a 1-4 step student of a trained teacher in --workdir (docs/distillation.md): consistency distillation
           --config.distill.method=cd --config.distill.teacher_workdir=runs/teacher, consistency training (ct,
           no teacher) or progressive; then --mode sample --config.sampling.method=consistency --config.sampling.steps=2
  fid      the papers' FID: eval.fid_samples samples (50000) per seed (eval.fid_seeds) against the training set's
           statistics (cached .npz, or eval.fid_reference); KID and precision / recall too: fid/fid.json

a shipped model, no training (scoresde sample --help):
  scoresde sample --pretrained digits [--label 3] [--outdir samples_digits]
  scoresde eval --pretrained digits [--num_test 50]

example (the main job, under a minute on 2 CPU cores):
  python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode train
  python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode eval
  python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode sample

config fields: every field, its default and what it does:  python main.py --config_help
override any of them:  --config.<section>.<field>=<value>   (e.g. --config.training.n_iters=2000)
"""


def print_help() -> None:
    """``--help``: what the program does, the modes, an example, the flags; exit status 0."""
    print(__doc__.split("\n\n")[0].strip())
    print(HELP)
    print("flags:")
    print(FLAGS.main_module_help())


PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config_path(argv: list[str]) -> list[str]:
    """``--config configs/toy/gmm_vp.py`` names the shipped config when no such file exists here, so the
    installed command runs the README's examples from any directory."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            index, value, prefix = i + 1, out[i + 1], ""
        elif arg.startswith("--config="):
            index, value, prefix = i, arg[len("--config="):], "--config="
        else:
            continue
        path, _, override = value.partition(":")      # config_flags' FILE:ARGS form
        shipped = PACKAGE_CONFIGS / Path(path).relative_to("configs") if path.startswith("configs/") else None
        if not Path(path).exists() and shipped is not None and shipped.exists():
            out[index] = prefix + str(shipped) + (":" + override if override else "")
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one line and exit status 2 for a bad flag, override or config file
    (a missing or broken file, a ``get_config`` that fails) instead of a traceback; ``--help`` and
    ``--config_help`` print and exit 0."""
    if any(arg in ("-h", "--help", "--helpshort", "-?") for arg in argv[1:]):
        print_help()
        sys.exit(0)
    if "--config_help" in argv[1:]:
        try:
            print(config_help(load_config_file(resolve_config_path(argv))))
        except ValueError as err:
            fail(str(err), 2)
        sys.exit(0)
    argv = resolve_config_path(argv)
    unknown = _unknown_override(argv)
    if unknown:
        fail(unknown, 2)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=LOAD_MODULE_WARNING, category=DeprecationWarning)
            remaining = FLAGS(argv)
    except flags.Error as err:
        fail(f"{err} (--help lists the flags)", 2)
    except Exception as err:        # noqa: BLE001 -- the config file's own error, reported in one line
        fail(f"cannot load the config: {type(err).__name__}: {err}", 2)
    error = getattr(FLAGS["config"].value, "_error", None)    # config_flags defers a failed load
    if error is not None:
        fail(f"cannot load the config file {config_flags.get_config_filename(FLAGS['config'])}: "
             f"{type(error).__name__}: {error}", 2)
    return remaining


def _verbose() -> bool:
    return FLAGS["verbosity"].value >= 1


def main(argv) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}", 2)
    try:
        options = options_from_config(FLAGS.config, distill=FLAGS.mode == "distill")
        check_workdir(FLAGS.workdir, FLAGS.mode, pretrained=options.network.pretrained is not None)
    except (ValueError, OSError) as err:
        if _verbose():
            raise
        fail(f"invalid config: {err}" if isinstance(err, ValueError) else str(err), 2)
    logging.info("%s with %s in %s", FLAGS.mode, config_flags.get_config_filename(FLAGS["config"]), FLAGS.workdir)
    sys.exit(execute(options, FLAGS.workdir, FLAGS.mode, FLAGS.outdir, verbose=_verbose()))


def cli() -> None:
    """The ``scoresde`` console script, ``python -m scoresde`` and ``python main.py``; ``scoresde sample
    --pretrained digits`` (and ``eval``) is the flag form for a shipped model (``scoresde/cli/shipped.py``)."""
    # ml_collections' config flag finds the --config.<field> overrides in sys.argv itself, so the flag
    # form replaces it rather than going to app.run as argv
    sys.argv = flag_argv(sys.argv)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
