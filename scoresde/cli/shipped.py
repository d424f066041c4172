"""The shipped models from the command line, no config file or work directory needed:

    scoresde sample --pretrained digits [--label 3|all] [--guidance_scale 2] [--outdir samples_digits]
    scoresde eval --pretrained digits [--num_test 50] [--outdir eval_digits]

Each is the flag form with the shipped model's own config file (named in its JSON) and
``model.pretrained`` set to the name: ``--config <that file> --workdir <outdir> --mode <mode>
--outdir <outdir> --config.model.pretrained=<name>``, plus the overrides the options below give; any
other argument (``--config.sampling.steps=20``, ``--verbosity=1``) is passed on as it is.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scoresde.run.pretrained import SHIPPED, shipped_model

SUBCOMMANDS = ("sample", "eval")
DEFAULT_OUTDIR = {"sample": "samples_{name}", "eval": "eval_{name}"}
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# option -> the config field it sets, per subcommand
OVERRIDES = {"sample": {"label": "sampling.label", "guidance_scale": "sampling.guidance_scale",
                        "num_samples": "sampling.num_samples", "steps": "sampling.steps"},
             "eval": {"num_test": "eval.num_samples"}}


def parser_for(mode: str) -> argparse.ArgumentParser:
    what = {"sample": "Draw samples (samples.npz, samples.png, info.json) from",
            "eval": "The held-out loss and bits/dim (metrics.json) of"}[mode]
    parser = argparse.ArgumentParser(
        prog=f"scoresde {mode}", description=f"{what} a model shipped with the package; no config file or work "
                                             f"directory needed (the flag form: scoresde --help).",
        epilog=f"shipped models: {', '.join(SHIPPED.names())}. Other arguments go on to the flag form as they are: "
               f"any --config.<section>.<field>=<value> of the model's config, --verbosity=1.")
    parser.add_argument("--pretrained", required=True, metavar="NAME",
                        help=f"a shipped model: {', '.join(SHIPPED.names())}")
    parser.add_argument("--outdir", default=None,
                        help=f"where the results go (default ./{DEFAULT_OUTDIR[mode].format(name='<NAME>')})")
    parser.add_argument("--seed", type=int, default=None, help="the random seed (default: the config's)")
    if mode == "sample":
        parser.add_argument("--label", default=None,
                            help="a class index, or 'all' for one row per class (default: the config's)")
        parser.add_argument("--guidance_scale", type=float, default=None,
                            help="classifier-free guidance weight w (1: the conditional model; default: the config's)")
        parser.add_argument("--num_samples", type=int, default=None, help="how many samples (default: the config's)")
        parser.add_argument("--steps", type=int, default=None, help="sampler steps (default: the config's)")
    else:
        parser.add_argument("--num_test", type=int, default=None,
                            help="evaluate on the first N held-out items (default: the config's, all of them)")
    return parser


def subcommand_error(mode: str, message: str) -> None:
    print(f"scoresde {mode}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


def flag_argv(argv: list[str]) -> list[str]:
    """``argv`` in the flag form when it starts with a subcommand (``scoresde sample --pretrained digits``),
    else as it is."""
    if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
        return list(argv)
    mode = argv[1]
    args, rest = parser_for(mode).parse_known_args(argv[2:])
    try:
        config = shipped_model(args.pretrained).read_info()["config"]
    except ValueError as err:
        subcommand_error(mode, f"--pretrained: {err}")
    outdir = args.outdir or DEFAULT_OUTDIR[mode].format(name=args.pretrained)
    out = [argv[0], "--config", str(CONFIGS / config), "--workdir", outdir, "--mode", mode, "--outdir", outdir,
           f"--config.model.pretrained={args.pretrained}"]
    if args.seed is not None:
        out.append(f"--config.seed={args.seed}")
    for option, field in OVERRIDES[mode].items():
        value = getattr(args, option)
        if value is not None:
            out.append(f"--config.{field}={value}")
    return out + rest
