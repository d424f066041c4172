"""Add the options to checkpoints written before checkpoints stored them (format 1):

    python -m scoresde.cli.upgrade --workdir runs/gmm_vp

Each format-1 checkpoint of ``<workdir>/checkpoints`` gets the options its stored config gives
(validated like a command-line config; fields added to the config since keep their defaults) and is
rewritten atomically as the current format. Checkpoints already in the current format are left alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from scoresde.cli.factory import options_from_config
from scoresde.configs.default import get_default_config
from scoresde.run import checkpoint as ckpt
from scoresde.run.workdir import WorkdirLock, checkpoint_dir


def overlay(target, values: dict) -> None:
    """Set the fields of the config ``target`` that ``values`` (a stored config's JSON, sections as
    objects) has; fields the config no longer has are skipped, lists become tuples."""
    for key, value in values.items():
        if key not in target:
            continue
        if isinstance(value, dict):
            overlay(target[key], value)
        else:
            target[key] = tuple(value) if isinstance(value, list) else value


def options_json_of_config(config_json: str) -> str:
    """``RunOptions.to_json`` of the options a stored config gives."""
    config = get_default_config()
    with config.unlocked():
        overlay(config, json.loads(config_json))
    return options_from_config(config).to_json()


def upgrade_checkpoint(path: Path) -> bool:
    """Rewrite the checkpoint ``path`` with its options if it lacks them; whether it was rewritten."""
    ckpt.verify_checksum(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != 1 or "options" in state:
        return False
    try:
        options_json = options_json_of_config(state["config"])
    except ValueError as err:
        raise ValueError(f"{path}: its stored config does not give valid options: {err}") from err
    ckpt.atomic_save({**state, "format": ckpt.FORMAT_VERSION, "options": options_json}, path)
    return True


def upgrade_workdir(workdir: str | Path) -> list[Path]:
    """``upgrade_checkpoint`` on every checkpoint of ``workdir`` (no trainer may run there meanwhile);
    returns those rewritten."""
    with WorkdirLock(workdir):
        return [path for _, path in ckpt.list_checkpoints(checkpoint_dir(workdir)) if upgrade_checkpoint(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scoresde.cli.upgrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="the work directory whose checkpoints to upgrade")
    args = parser.parse_args(argv)
    try:
        done = upgrade_workdir(args.workdir)
    except (ValueError, OSError) as err:
        print(f"upgrade: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"upgraded {len(done)} checkpoint(s) in {checkpoint_dir(args.workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
