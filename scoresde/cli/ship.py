"""Make a trained work directory a shipped model (``scoresde/pretrained/``):

    python -m scoresde.cli.ship --workdir runs/digits_cond --name digits --config configs/digits/ddpmpp_vp_cond.py

The newest checkpoint's EMA weights are written as ``<stem>.pt`` (floating tensors in float16) with
``<stem>.json`` beside them: the file's SHA-256, the options the weights were trained with, the data's
description, the training step and the config file (relative to ``scoresde/configs``), which
``scoresde sample --pretrained <name>`` reads its sampling settings from.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from scoresde.cli.shipped import CONFIGS
from scoresde.run.inference import ema_network, read_trained
from scoresde.run.pretrained import shipped_model, write_shipped


def ship(workdir: str | Path, name: str, config: str, directory: Path | None = None) -> Path:
    """Write the shipped model ``name`` (a name of ``SHIPPED``) from ``workdir``'s newest checkpoint;
    ``config`` is the config file that trained it, ``configs/<group>/<file>.py``."""
    shipped = shipped_model(name)
    relative = Path(config).relative_to("configs") if Path(config).parts[:1] == ("configs",) else Path(config)
    if not (CONFIGS / relative).is_file():
        raise ValueError(f"--config {config}: no such config in {CONFIGS}")
    trained = read_trained(workdir, "no checkpoint in {directory}; train there first")
    module = ema_network(trained, torch.device("cpu"))
    info = {"name": name, "description": shipped.description, "config": relative.as_posix(),
            "step": trained.step, "data_meta": trained.state["meta"],
            "options": json.loads(trained.options.to_json())}
    return write_shipped(module, shipped.stem, info, directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scoresde.cli.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the work directory whose newest checkpoint to ship")
    parser.add_argument("--name", required=True, help="the shipped model's name (scoresde.run.pretrained.SHIPPED)")
    parser.add_argument("--config", required=True, help="the config file that trained it: configs/<group>/<file>.py")
    args = parser.parse_args(argv)
    try:
        path = ship(args.workdir, args.name, args.config)
    except (ValueError, OSError) as err:
        print(f"ship: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size} bytes) and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
