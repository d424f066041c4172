"""Run support: plain options, checkpoints, the work directory, processes, devices, plots and model loading."""
