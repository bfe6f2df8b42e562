"""Noise-level grids and reverse-diffusion steps in the VE ``sigma`` convention, shared by priors and samplers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from posterior.utils import randn


def sigma_grid(
    sigma_min: float,
    sigma_max: float,
    steps: int,
    *,
    rho: float = 7.0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The EDM grid (Karras et al. 2022, eq. 5): ``steps`` noise levels from ``sigma_max`` down to ``sigma_min``.

    ``sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Returns
    -------
    Tensor, shape (steps,), descending.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).to(dtype=dtype, device=device)


def ancestral_step(
    x: Tensor,
    x0_hat: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw ``x_{sigma_next}`` from the Gaussian bridge ``p(x_{sigma_next} | x_sigma = x, x0 = x0_hat)``.

    Mean ``x0_hat + (sigma_next^2 / sigma^2) (x - x0_hat)``, variance
    ``sigma_next^2 (1 - sigma_next^2 / sigma^2)``: the DDPM ancestral step written in VE coordinates.
    ``sigma`` and ``sigma_next`` are floats or tensors broadcastable to ``x``.
    """
    ratio = (sigma_next / sigma) ** 2
    noise = randn(x.shape, generator, x.dtype, x.device)
    return x0_hat + ratio * (x - x0_hat) + sigma_next * (1 - ratio) ** 0.5 * noise


def heun_step(
    denoise: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: Tensor, sigma_next: Tensor
) -> Tensor:
    """One step of Heun's method on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``.

    Karras et al. 2022, Algorithm 1; falls back to Euler when ``sigma_next == 0``. 2 NFE (1 at the end).
    ``sigma`` and ``sigma_next`` are numbers or one per row of ``x`` (shape ``(n,)``).
    """

    def rows(s):
        s = torch.as_tensor(s, dtype=x.dtype, device=x.device)
        return s.reshape(-1, *[1] * (x.dim() - 1)) if s.dim() else s

    d = (x - denoise(x, sigma)) / rows(sigma)
    x_euler = x + (rows(sigma_next) - rows(sigma)) * d
    if bool((torch.as_tensor(sigma_next) == 0).all()):
        return x_euler
    d_next = (x_euler - denoise(x_euler, sigma_next)) / rows(sigma_next)
    return x + (rows(sigma_next) - rows(sigma)) * 0.5 * (d + d_next)
