"""``python -m scoresde``: the command line (``scoresde --help``)."""
from scoresde.cli.main import cli

cli()
