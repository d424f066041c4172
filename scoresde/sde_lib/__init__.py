"""Forward processes: VP (DDPM), sub-VP, VE (SMLD/NCSN) and cosine-VP SDEs, plus exact Gaussian mixtures."""
from scoresde.sde_lib.base import SDE, ReverseSDE
from scoresde.sde_lib.mixture import GaussianMixture
from scoresde.sde_lib.labelled import LabelledGaussianMixture, condition_mixture, marginal_mixture
from scoresde.sde_lib.paths import EDMSDE, PathSDE, RectifiedFlow
from scoresde.sde_lib.respace import RespacedSDE, respace, space_levels  # a chain on K of its N levels
from scoresde.sde_lib.tabulated import TabulatedVPSDE  # any DDPM beta table, e.g. a diffusers scheduler's
from scoresde.utils import Registry, append_dims
from scoresde.sde_lib.ve import VESDE
from scoresde.sde_lib.vp import CosineVPSDE, VPSDE, subVPSDE

SDES: Registry = Registry("sde")
SDES.register("vpsde", VPSDE)
SDES.register("subvpsde", subVPSDE)
SDES.register("vesde", VESDE)
SDES.register("cosine_vpsde", CosineVPSDE)
# flow matching and EDM
SDES.register("rectified_flow", RectifiedFlow)
SDES.register("edm", EDMSDE)


def get_sde(name: str, **kwargs) -> SDE:
    """Build a registered SDE by name, e.g. ``get_sde("vpsde", beta_min=0.1, beta_max=20.0, N=1000)``."""
    return SDES.get(name)(**kwargs)


__all__ = ["SDE", "ReverseSDE", "VPSDE", "subVPSDE", "VESDE", "CosineVPSDE", "GaussianMixture",
           "SDES", "get_sde", "Registry", "append_dims",
           "LabelledGaussianMixture", "condition_mixture", "marginal_mixture",
           "RectifiedFlow", "EDMSDE", "PathSDE", "TabulatedVPSDE", "RespacedSDE", "respace", "space_levels"]
