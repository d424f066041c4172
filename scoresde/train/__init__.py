"""Training: the loop, the losses, the optimiser and class conditioning."""
