"""The command line as tests run it: in this process by default (what ``app.run`` does: parse the flags
with ``parse_flags``, then ``main``), in a real process only where a test needs one (signals, a lock
held by another process, torchrun workers, the entry points themselves)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from absl import flags

REPO = Path(__file__).resolve().parents[2]


@dataclass
class CliResult:
    """What the command line left behind: its exit status and its stdout / stderr text (the log lines,
    which a real process prints on stderr, included)."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        return self.stderr.strip().splitlines()[-1]


def cli_argv(workdir=None, mode: Optional[str] = None, *args: str) -> List[str]:
    """``main.py [--workdir W] [--mode M] args...``."""
    argv = ["main.py"]
    if workdir is not None:
        argv.append(f"--workdir={workdir}")
    if mode is not None:
        argv.append(f"--mode={mode}")
    return argv + list(args)


@contextlib.contextmanager
def logs_into(stream: io.StringIO):
    """Log records at INFO and above go to ``stream`` too, as absl's handler prints them on stderr."""
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def forget_flags() -> None:
    """Unparse absl's flags and remove the ``--config.<path>`` flags config_flags defined while parsing
    (absl refuses to define a flag twice), so the command line can be parsed again in this process."""
    flags.FLAGS.unparse_flags()
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
        delattr(flags.FLAGS, name)


def parse_argv(argv: List[str]) -> List[str]:
    """``main.parse_flags(argv)`` as ``app.run`` calls it, with ``sys.argv`` set (config_flags reads the
    overrides there); call ``forget_flags()`` afterwards."""
    from scoresde.cli import main

    saved, sys.argv = sys.argv, list(argv)
    try:
        return main.parse_flags(list(argv))
    finally:
        sys.argv = saved


def run_cli(*args: str, workdir=None, mode: Optional[str] = None) -> CliResult:
    """``python main.py [--workdir W] [--mode M] args...`` in this process: the exit status, stdout and
    stderr. absl's flags are parsed from ``sys.argv`` (config_flags reads the overrides there) and
    unparsed afterwards, so the next call starts clean."""
    from scoresde.cli import main

    argv = cli_argv(workdir, mode, *args)
    out, err = io.StringIO(), io.StringIO()
    status = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), logs_into(err):
            try:
                main.main(parse_argv(argv))
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        forget_flags()
    return CliResult(status, out.getvalue(), err.getvalue())


def process_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli_process(*args: str, workdir=None, mode: Optional[str] = None, log: Optional[Path] = None,
                    command: Optional[List[str]] = None, timeout: float = 300):
    """``python main.py ...`` (or ``command``) in a real process from the repository root. With ``log``
    it starts and returns the ``Popen`` at once, stdout and stderr going to that file (an unread pipe
    would fill up and block a trainer); otherwise it waits and returns the ``CompletedProcess``."""
    cmd = command or [sys.executable, *cli_argv(workdir, mode, *args)]
    if log is not None:
        with open(log, "w") as stream:
            return subprocess.Popen(cmd, cwd=REPO, env=process_env(), stdout=stream, stderr=subprocess.STDOUT,
                                    text=True)
    return subprocess.run(cmd, cwd=REPO, env=process_env(), capture_output=True, text=True, timeout=timeout)
