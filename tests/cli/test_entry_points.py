"""The ways to start the command line, each in a real process: ``python -m scoresde`` and the installed
``scoresde`` console script (``python main.py`` runs for real in test_main_e2e.py and test_faults.py).
Everything else about the command line runs in the test process (``helpers.cli.run_cli``)."""
import shutil
import sys

import pytest

from helpers.cli import run_cli_process


def _assert_help(result):
    assert result.returncode == 0, result.stderr[-2000:]
    assert "modes (--mode):" in result.stdout and "--config_help" in result.stdout


def test_python_dash_m_scoresde_prints_the_help():
    _assert_help(run_cli_process(command=[sys.executable, "-m", "scoresde", "--help"], timeout=120))


def test_the_console_script_prints_the_help():
    script = shutil.which("scoresde")
    if script is None:
        pytest.skip("the scoresde console script is not installed (pip install -e .)")
    _assert_help(run_cli_process(command=[script, "--help"], timeout=120))
