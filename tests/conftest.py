"""Suite-wide test settings, and the shared helpers every test module uses:

- ``tiny_config(name="toy/gmm_vp", **overrides)``: the one builder of small configs, with
  ``tiny_flags(name, **overrides)`` the command-line flags that build the same config
  (``tests/helpers/tiny.py``);
- ``run_cli(*args, workdir=..., mode=...)``: ``python main.py ...`` in this process (exit status, stdout,
  stderr with the log lines); ``run_cli_process(...)`` in a real process, only for signals, a lock held by
  another process, torchrun workers and the entry points themselves (``tests/helpers/cli.py``).

Test modules import them from ``helpers`` (``tests/`` is on the path, pyproject.toml).
"""
import os

import pytest
import torch

from helpers.cli import forget_flags, parse_argv, run_cli, run_cli_process
from helpers.tiny import tiny_config, tiny_flags

__all__ = ["run_cli", "run_cli_process", "tiny_config", "tiny_flags"]


@pytest.fixture(autouse=True, scope="session")
def one_intra_op_thread():
    """The tests' tensors are small (a few thousand 2-D points, tiny networks): intra-op threads only
    add synchronisation, and on a busy 2-core machine their spin-waits made modules 5-10x slower.
    Multi-process tests set one thread in each worker too."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"      # the trainer's thread policy reads it (training.threads = 0)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def parsed_flags():
    """Parse a command line into absl's FLAGS as ``app.run`` would (config_flags reads the overrides
    from ``sys.argv``) and undo it afterwards, override flags included."""
    yield lambda *argv: parse_argv(["main.py", *argv])
    forget_flags()
