"""``python main.py --config configs/toy/gmm_vp.py --workdir runs/gmm_vp --mode train``: the command line of
``scoresde`` (``scoresde/cli/main.py``) run from a checkout, as score_sde users are used to."""
from scoresde.cli.main import cli

if __name__ == "__main__":
    cli()
