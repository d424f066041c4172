"""What ``--mode eval``, ``sample``, ``inpaint`` and ``colorize`` run, on plain options."""
