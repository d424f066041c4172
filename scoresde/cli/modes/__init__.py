"""What ``--mode eval``, ``sample``, ``inpaint``, ``colorize`` and ``fid`` run, on plain options."""
