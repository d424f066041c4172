"""A VP process given by its discrete DDPM betas: any ``beta_1..beta_N`` table (a diffusers scheduler's
``squaredcos_cap_v2`` or ``scaled_linear`` betas, ``trained_betas``, ...) as a continuous-time VP SDE."""
from __future__ import annotations

import torch

from scoresde.sde_lib.base import SDE
from scoresde.sde_lib.vp import VPSDE


class TabulatedVPSDE(VPSDE):
    """The VP SDE ``dx = -½ beta(t) x dt + sqrt(beta(t)) dw`` (Song et al. 2021, eq. 11) whose discrete chain
    is DDPM with exactly the given ``betas`` (Ho et al. 2020, eq. 4).

    Level ``i`` of the chain sits at ``t_i = i T / (N - 1)`` (``SDE.timestep_index`` maps ``t`` back to it,
    as for every discrete model here), and the continuous process passes through every level:
    ``alpha_bar(t_i) = prod_{j<=i} (1 - beta_j)`` in float64. Between levels ``L(t) = -log alpha_bar(t)``
    is the monotone cubic Hermite interpolant of the ``L(t_i)`` (Fritsch & Carlson 1980, slopes the harmonic
    means of the neighbouring secants), so ``beta(t) = L'(t)`` is continuous and positive and the SDE's
    marginals are exactly ``alpha_t = exp(-L/2)``, ``sigma_t^2 = 1 - exp(-L)``. Outside ``[0, T]``
    ``L`` continues linearly (``inverse_log_snr`` of a log-SNR beyond the table). ``alpha_bar(0)`` is
    ``1 - beta_1``, not 1: time 0 is DDPM's first noise level, as in the discrete chain.

    ``discrete_betas`` and ``alphas_cumprod`` (float32) are those of DDPM / diffusers bit for bit; the
    samplers use the float64 chain of the same float32 betas. Continuous-time models see the fractional
    DDPM timestep ``t (N - 1) / T`` as their label.
    """

    def __init__(self, betas, T: float = 1.0):
        betas32 = _check_betas(betas)
        SDE.__init__(self, N=betas32.numel(), T=T)
        self._set_discrete_betas(betas32, betas32.double())
        self._knots = _hermite_knots(-torch.log(self.ddpm_64.alphas_cumprod), self.T)
        self._device_knots: dict = {}

    # ----- L(t) = -log alpha_bar(t) and its derivative beta(t) ----------------------------------------
    def _knots_on(self, device) -> tuple:
        if device not in self._device_knots:
            self._device_knots[device] = tuple(k.to(device) for k in self._knots)
        return self._device_knots[device]

    def _hermite(self, t: torch.Tensor):
        """``(L(t), L'(t))`` in float64 (cubic Hermite inside ``[0, T]``, linear outside)."""
        values, slopes = self._knots_on(t.device)
        h = self.T / (self.N - 1)
        s = t.double()
        inside = s.clamp(0.0, self.T)
        i = torch.floor(inside / h).long().clamp(0, self.N - 2)
        u = inside / h - i
        y0, y1, d0, d1 = values[i], values[i + 1], slopes[i] * h, slopes[i + 1] * h
        u2, u3 = u * u, u * u * u
        # Hermite basis h00, h10, h01, h11 and their u-derivatives
        value = (2 * u3 - 3 * u2 + 1) * y0 + (u3 - 2 * u2 + u) * d0 + (3 * u2 - 2 * u3) * y1 + (u3 - u2) * d1
        deriv = ((6 * u2 - 6 * u) * (y0 - y1) + (3 * u2 - 4 * u + 1) * d0 + (3 * u2 - 2 * u) * d1) / h
        end_slope = torch.where(s < 0, slopes[0], slopes[-1])
        return value + (s - inside) * end_slope, torch.where(s == inside, deriv, end_slope)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self._hermite(t)[1].to(_float_dtype(t))

    def log_mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        return (-0.5 * self._hermite(t)[0]).to(_float_dtype(t))

    def inverse_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """``t`` with ``L(t) = softplus(-log_snr)`` (``alpha_bar = sigmoid(log_snr)``), by bisection in float64:
        ``L`` is increasing, and 60 halvings of ``[t_lo, t_hi]`` reach float64 round-off."""
        target = torch.nn.functional.softplus(-log_snr.double())
        values, slopes = self._knots_on(target.device)
        # the linear continuation outside [0, T] inverts in closed form and brackets the rest
        lo = torch.minimum(target - values[0], torch.zeros_like(target)) / slopes[0]
        hi = self.T + torch.maximum(target - values[-1], torch.zeros_like(target)) / slopes[-1]
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self._hermite(mid)[0] < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(_float_dtype(log_snr))

    def noise_label(self, t, continuous=True):
        """The fractional DDPM timestep ``t (N - 1) / T`` for continuous models, the level index for discrete ones."""
        if continuous:
            return t * ((self.N - 1) / self.T)
        return self.timestep_index(t).to(t.dtype)


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def _check_betas(betas) -> torch.Tensor:
    """``betas`` as a float32 1-D tensor of at least 2 values in ``(0, 1)``, else ``ValueError``."""
    try:
        b = torch.as_tensor(betas, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"betas must be a 1-D sequence of floats in (0, 1), got {type(betas).__name__}")
    if b.ndim != 1 or b.numel() < 2:
        raise ValueError(f"betas must be a 1-D sequence of at least 2 values, got shape {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()) or not bool(((b > 0) & (b < 1)).all()):
        raise ValueError(f"betas must lie in (0, 1), got values in [{float(b.min()):.6g}, {float(b.max()):.6g}]")
    return b


def _hermite_knots(values: torch.Tensor, T: float):
    """Values and slopes ``dL/dt`` at the knots ``t_i = i T / (N - 1)`` of the monotone cubic through the
    increasing ``values``: the harmonic mean of the neighbouring secants inside, the one-sided secant at each
    end (Fritsch & Carlson 1980; such slopes are at most twice a secant, inside their monotone region)."""
    secants = (values[1:] - values[:-1]) * ((values.numel() - 1) / T)
    inner = 2.0 * secants[1:] * secants[:-1] / (secants[1:] + secants[:-1]).clamp(min=1e-300)
    return values, torch.cat([secants[:1], inner, secants[-1:]])
