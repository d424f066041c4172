"""Walk a command through the code: which of the project's files a run enters, in order.

    python -m bench.walk --mode train      # config -> saved checkpoint, one training step
    python -m bench.walk --mode sample     # checkpoint -> PNG (trains one step first, untraced)

Traces every Python call made while the mode runs (after the imports) and keeps those whose code lives
in the project (not tests, not bench). A *hop* is a call from one project file into another; the walk
prints each distinct hop (caller file -> callee file) numbered in the order first taken, and counts the
files entered, the distinct hops, the *re-entries* (distinct hops into a file the walk had already entered
and left: the hops beyond the one that first enters each file), and the hops *back* into a file still on
the call stack (a lower layer calling up, e.g. through a callback). ``--repo`` runs another checkout (its
``main.py``), so that an older layout can be measured with the same code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

TINY = ["--config.training.n_iters=1", "--config.training.snapshot_freq=1", "--config.training.eval_freq=1",
        "--config.training.checkpoint_freq=1", "--config.training.snapshot_sampling=False",
        "--config.training.progress_bar=False", "--config.training.tensorboard=False", "--config.data.num_train=1024",
        "--config.sampling.num_samples=16", "--config.sampling.batch_size=16", "--config.sampling.method=fast",
        "--config.sampling.steps=2", "--config.eval.num_samples=16"]


class Walk:
    """Records the project files entered by calls, in order."""

    def __init__(self, root: Path):
        self.root = str(root) + os.sep
        self.skip = (str(root / "tests") + os.sep, str(root / "bench") + os.sep)
        self.stack: list[str | None] = []
        self.hops: list[tuple[str, str]] = []

    def project_file(self, frame) -> str | None:
        name = frame.f_code.co_filename
        if name.startswith("<"):
            return None
        name = os.path.realpath(name)
        if not name.startswith(self.root) or name.startswith(self.skip) or frame.f_code.co_name == "<module>":
            return None
        return name[len(self.root):]

    def __call__(self, frame, event, arg):
        if event == "call":
            here = self.project_file(frame)
            caller = next((f for f in reversed(self.stack) if f is not None), None)
            if here is not None and caller is not None and here != caller:
                self.hops.append((caller, here, here in self.stack))
            self.stack.append(here)
        elif event == "return" and self.stack:
            self.stack.pop()

    def report(self, title: str) -> dict:
        """Files entered, distinct hops (caller file -> callee file, in the order first taken),
        re-entries (distinct hops into a file entered before) and back-calls (distinct hops into a file
        that is still on the call stack: a callback up the layers)."""
        edges, back, entered, reentries = {}, set(), set(), 0
        for caller, callee, on_stack in self.hops:
            entered.add(caller)
            if (caller, callee) not in edges:
                edges[(caller, callee)] = len(edges) + 1
                reentries += callee in entered
            entered.add(callee)
            if on_stack:
                back.add((caller, callee))
        files = {f for edge in edges for f in edge}
        print(f"{title}: {len(files)} files, {len(edges)} distinct hops ({reentries} into a file entered "
              f"before), {len(back)} back into a file still on the call stack; {len(self.hops)} calls across "
              f"files in all")
        for (caller, callee), i in edges.items():
            mark = "   <- back" if (caller, callee) in back else ""
            print(f"  {i:3d}. {caller} -> {callee}{mark}")
        return {"files": len(files), "hops": len(edges), "reentries": reentries, "back": len(back),
                "calls": len(self.hops)}


def run_main(repo: Path, argv: list[str], walk: Walk | None) -> None:
    sys.argv = ["main.py", *argv]
    if walk is not None:
        sys.setprofile(walk)
    try:
        runpy.run_path(str(repo / "main.py"), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        sys.setprofile(None)


def import_everything(repo: Path) -> None:
    """Import every module of the project first, so that imports (and what they run) stay out of the walk."""
    for path in sorted(repo.rglob("*.py")):
        parts = path.relative_to(repo).with_suffix("").parts
        if parts[0] in ("tests", "bench", "docs", "main", "build", "dist") or parts[-1] == "__main__" or any(p.startswith(".") for p in parts):
            continue
        if parts[0] == "configs" and (repo / "scoresde").is_dir():
            continue      # the root symlink of scoresde/configs
        importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("train", "sample", "eval"), default="train")
    parser.add_argument("--config", default="configs/toy/gmm_vp.py")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    with tempfile.TemporaryDirectory() as workdir:
        common = ["--config", args.config, "--workdir", workdir, *TINY]
        if args.mode != "train":      # absl parses a command line once per process: train in another
            subprocess.run([sys.executable, "main.py", *common, "--mode", "train"], check=True,
                           capture_output=True)
        import_everything(repo)
        walk = Walk(repo)
        run_main(repo, [*common, "--mode", args.mode], walk)
        walk.report(f"--mode {args.mode} ({args.config})")


if __name__ == "__main__":
    main()
