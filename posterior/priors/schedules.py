"""Noise schedules, converted at one boundary to the variance-exploding ``sigma`` convention.

A network is trained at some conditioning value ``t`` on inputs ``z = input_scale(sigma) * x``.
Every schedule gives, for a VE noise level ``sigma`` (``x = x0 + sigma * eps``):

- ``t(sigma)``: the conditioning value the network expects;
- ``sigma_of_t(t)``: the inverse map;
- ``input_scale(sigma)``: the factor from VE coordinates to the network's input coordinates;
- ``sigma_min``, ``sigma_max``: the trained range.

Variance-preserving (VP) models use ``x_vp = x / sqrt(1 + sigma^2)``, i.e.
``alpha_bar = 1 / (1 + sigma^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators.checks import as_bool, as_float, as_int, check_less


def _sigma_range(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` as finite floats with ``0 < sigma_min < sigma_max``."""
    sigma_min, sigma_max = as_float(sigma_min, "sigma_min", gt=0), as_float(sigma_max, "sigma_max", gt=0)
    check_less(sigma_min, sigma_max, "sigma_min", "sigma_max")
    return sigma_min, sigma_max


class Schedule:
    """Base class; see the module docstring for the contract."""

    sigma_min: float
    sigma_max: float
    variance_preserving: bool = False

    def t(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma_of_t(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def input_scale(self, sigma: Tensor) -> Tensor:
        return torch.ones_like(sigma)


class VPSchedule(Schedule):
    """Variance-preserving schedule defined by ``alpha_bar(t)``; build with :meth:`linear` or :meth:`cosine`.

    ``discrete=True`` is a DDPM-style table of ``num_steps`` levels indexed by ``t = 0..num_steps-1``;
    ``t(sigma)`` then interpolates a fractional index linearly in ``log sigma`` between table entries.
    ``discrete=False`` is continuous time ``t`` in ``[t_min, t_max]``, fed to the network multiplied
    by ``time_scale`` (e.g. 999 for networks trained on ``1000 t``).
    """

    variance_preserving = True

    def __init__(
        self,
        kind: str,
        *,
        discrete: bool,
        num_steps: int = 1000,
        time_scale: float = 1.0,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        s: float = 0.008,
        t_min: float = 1e-3,
        t_max: float = 1.0,
    ):
        if kind not in ("linear", "cosine"):
            raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")
        discrete = as_bool(discrete, "discrete")
        num_steps = as_int(num_steps, "num_steps", minimum=2)
        time_scale = as_float(time_scale, "time_scale", gt=0)
        beta_min, beta_max = as_float(beta_min, "beta_min", ge=0), as_float(beta_max, "beta_max", gt=0)
        if kind == "linear":
            check_less(beta_min, beta_max, "beta_min", "beta_max")
            if discrete and beta_max >= num_steps:
                raise ValueError(f"beta_max / num_steps must be < 1 (a DDPM beta), got beta_max={beta_max:g}")
        s = as_float(s, "s", ge=0)
        self.kind, self.discrete, self.num_steps, self.time_scale = kind, discrete, num_steps, time_scale
        self.beta_min, self.beta_max, self.s = beta_min, beta_max, s
        if discrete:
            if (
                kind == "linear"
            ):  # Ho et al. 2020: beta_t from 1e-4 to 0.02 over 1000 steps (beta_min/max in 1/1000).
                betas = torch.linspace(
                    beta_min / num_steps, beta_max / num_steps, num_steps, dtype=torch.float64
                )
                alpha_bar = torch.cumprod(1 - betas, 0)
            else:  # Nichol & Dhariwal 2021: betas clipped at 0.999.
                grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
                f = self._cosine_alpha_bar(grid)
                betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
                alpha_bar = torch.cumprod(1 - betas, 0)
            self.log_sigmas = 0.5 * torch.log((1 - alpha_bar) / alpha_bar)
            self.sigma_min = math.exp(float(self.log_sigmas[0]))
            self.sigma_max = math.exp(float(self.log_sigmas[-1]))
        else:
            t_min, t_max = as_float(t_min, "t_min", gt=0), as_float(t_max, "t_max", le=1)
            check_less(t_min, t_max, "t_min", "t_max")
            self.t_min, self.t_max = t_min, t_max
            self.sigma_min = float(self.sigma_of_t(torch.tensor(t_min * time_scale, dtype=torch.float64)))
            self.sigma_max = float(self.sigma_of_t(torch.tensor(t_max * time_scale, dtype=torch.float64)))
        if not 0 < self.sigma_min < self.sigma_max < math.inf:
            raise ValueError(
                f"the {kind} schedule with these parameters spans sigma from {self.sigma_min:g} to "
                f"{self.sigma_max:g}, expected 0 < sigma_min < sigma_max < inf"
            )

    @classmethod
    def linear(
        cls,
        *,
        discrete: bool = True,
        num_steps: int = 1000,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        time_scale: float = 1.0,
    ) -> VPSchedule:
        """Linear betas: DDPM (discrete, betas 1e-4..0.02) or VP-SDE (continuous, beta(t) = 0.1 + 19.9 t)."""
        return cls(
            "linear",
            discrete=discrete,
            num_steps=num_steps,
            beta_min=beta_min,
            beta_max=beta_max,
            time_scale=time_scale,
        )

    @classmethod
    def cosine(
        cls,
        *,
        discrete: bool = True,
        num_steps: int = 1000,
        s: float = 0.008,
        time_scale: float = 1.0,
        t_max: float = 0.999,
    ) -> VPSchedule:
        """Cosine ``alpha_bar`` of Nichol & Dhariwal (2021) with offset ``s``.

        ``alpha_bar(1) = 0``, so continuous time stops at ``t_max`` (default 0.999: ``sigma_max`` ~ 640).
        """
        return cls("cosine", discrete=discrete, num_steps=num_steps, s=s, time_scale=time_scale, t_max=t_max)

    def _cosine_alpha_bar(self, t: Tensor) -> Tensor:
        f = torch.cos((t + self.s) / (1 + self.s) * math.pi / 2) ** 2
        return f / math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2

    def sigma_of_t(self, t: Tensor) -> Tensor:
        if self.discrete:
            t = torch.as_tensor(t)
            idx = t.to(torch.float64).clamp(0, self.num_steps - 1)
            lo = idx.floor().long().clamp(max=self.num_steps - 2)
            frac = idx - lo
            table = self.log_sigmas.to(idx.device)
            log_s = (1 - frac) * table[lo] + frac * table[lo + 1]
            return torch.exp(log_s).to(t.dtype if t.is_floating_point() else torch.float64)
        t = torch.as_tensor(t) / self.time_scale
        if self.kind == "linear":  # sigma^2 = 1 / alpha_bar - 1 = expm1(-log alpha_bar), exact at small t
            return torch.sqrt(torch.expm1(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))
        alpha_bar = self._cosine_alpha_bar(t)
        return torch.sqrt((1 - alpha_bar) / alpha_bar)

    def t(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma)
        if self.discrete:
            table = self.log_sigmas.to(sigma.device)
            log_s = torch.log(sigma.to(torch.float64)).clamp(table[0], table[-1])
            hi = torch.searchsorted(table, log_s.contiguous()).clamp(1, self.num_steps - 1)
            frac = (log_s - table[hi - 1]) / (table[hi] - table[hi - 1])
            return (hi - 1 + frac).to(sigma.dtype)
        log1p_s2 = torch.log1p(sigma**2)  # = -log alpha_bar
        if self.kind == "linear":
            db = self.beta_max - self.beta_min
            t = (-self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * log1p_s2)) / db
        else:
            c = math.cos(self.s / (1 + self.s) * math.pi / 2)
            t = (1 + self.s) * 2 / math.pi * torch.arccos(torch.exp(-0.5 * log1p_s2) * c) - self.s
        return t * self.time_scale

    def input_scale(self, sigma: Tensor) -> Tensor:
        return 1 / torch.sqrt(1 + sigma**2)


class VESchedule(Schedule):
    """Variance-exploding schedule (Song et al. 2021): the network is conditioned on ``sigma`` itself,
    or on ``log sigma`` with ``log_conditioning=True``; inputs are not rescaled."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, log_conditioning: bool = False):
        self.sigma_min, self.sigma_max = _sigma_range(sigma_min, sigma_max)
        self.log_conditioning = as_bool(log_conditioning, "log_conditioning")

    def t(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma) if self.log_conditioning else sigma

    def sigma_of_t(self, t: Tensor) -> Tensor:
        return torch.exp(t) if self.log_conditioning else t


class EDMSchedule(Schedule):
    """EDM (Karras et al. 2022, Table 1): conditioning ``c_noise = log(sigma) / 4`` and input scaling
    ``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        self.sigma_min, self.sigma_max = _sigma_range(sigma_min, sigma_max)
        self.sigma_data = as_float(sigma_data, "sigma_data", gt=0)

    def t(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma) / 4

    def sigma_of_t(self, t: Tensor) -> Tensor:
        return torch.exp(4 * t)

    def input_scale(self, sigma: Tensor) -> Tensor:
        return 1 / torch.sqrt(sigma**2 + self.sigma_data**2)
