"""scoresde: score-based generative modelling through SDEs, in PyTorch.

    from scoresde import sde_lib, samplers, models

``sde_lib`` holds the processes, ``models`` the networks and their parameterisations, ``samplers`` the
samplers, likelihoods and bounds; ``scoresde --help`` is the command line.
"""
__version__ = "0.2.0"
