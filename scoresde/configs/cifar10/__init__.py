"""cifar10 experiment configurations."""
