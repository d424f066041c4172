"""The public API (the project's API.md): every name it uses resolves from ``from scoresde import sde_lib,
samplers, models`` and is callable (a class or a function)."""
import pytest

from scoresde import models, samplers, sde_lib

MODULES = {"sde_lib": sde_lib, "samplers": samplers, "models": models}
# every ``module.name`` that API.md uses
API_NAMES = [
    ("models", "from_diffusers"),
    ("models", "get_score_fn"),
    ("samplers", "classifier_free_guidance"),
    ("samplers", "classifier_guidance"),
    ("samplers", "colorize"),
    ("samplers", "edm_sample"),
    ("samplers", "elbo"),
    ("samplers", "fast_sample"),
    ("samplers", "inpaint"),
    ("samplers", "log_likelihood"),
    ("samplers", "ode_sample"),
    ("samplers", "pc_sample"),
    ("samplers", "register_predictor"),
    ("sde_lib", "EDMSDE"),
    ("sde_lib", "RectifiedFlow"),
    ("sde_lib", "VESDE"),
    ("sde_lib", "VPSDE"),
    ("sde_lib", "subVPSDE"),
]


@pytest.mark.parametrize("module, name", API_NAMES)
def test_every_api_name_resolves(module, name):
    assert callable(getattr(MODULES[module], name))
