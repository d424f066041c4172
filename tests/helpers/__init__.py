"""Helpers shared by the test modules: tiny configs (``tiny.py``), the command-line runners
(``cli.py``) and data files written like the real ones (``data.py``)."""
