"""The command line: the config schema and its validation (``factory``), ``--help`` and the modes."""
