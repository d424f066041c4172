"""Experiment configurations (ml_collections). Each file defines ``get_config()``; ``main.py`` loads one
by path (``--config configs/toy/gmm_vp.py``) and any field can be overridden on the command line."""
