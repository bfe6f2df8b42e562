"""Noise-level grids and reverse-diffusion steps in the VE ``sigma`` convention, shared by priors and samplers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from posterior.utils import per_row, randn


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


def ancestral_moments(
    x: Tensor,
    x0_hat: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    x0_variance: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor]:
    """Mean and variance of the Gaussian bridge ``p(x_{sigma_next} | x_sigma = x, x0 = x0_hat)``.

    Mean ``x0_hat + r (x - x0_hat)`` with ``r = sigma_next^2 / sigma^2``, variance ``sigma_next^2 (1 - r)``
    (0 on the step to ``sigma_next = 0``): the DDPM ancestral step written in VE coordinates. With
    ``x0_variance`` ``c``, the variance of ``x0`` given ``x_sigma`` per coordinate (a number, or one per row
    of ``x``), the variance gains ``(1 - r)^2 c``: the share of ``x_{sigma_next}``'s spread that comes from
    ``x0`` not being ``x0_hat``, which the DDPM step leaves out (exact for Gaussian data with isotropic
    ``Cov[x0 | x_sigma] = c I``). ``sigma`` and ``sigma_next`` are floats or tensors broadcastable to ``x``.
    """
    ratio = (sigma_next / sigma) ** 2
    return x0_hat + ratio * (x - x0_hat), sigma_next**2 * (1 - ratio) + (1 - ratio) ** 2 * x0_variance


def x0_variance(
    x: Tensor, x0_hat: Tensor, sigma: Tensor, runs: int, gather: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """The variance per coordinate of ``x0`` given ``x_sigma``, averaged over each run's particles: from
    Tweedie's second moment, ``E tr Cov[x0 | x_sigma] = d sigma^2 - E |x_sigma - D(x_sigma, sigma)|^2``,
    with the expectation over the particles (which follow the twisted target, not the prior: an
    approximation). ``x``, ``x0_hat``: ``(runs * n, *event_shape)`` run-major; returns ``(runs * n,)``, each
    particle its run's value, clamped at 0. ``gather`` maps this process's ``(runs, n)`` squared
    residuals to the whole runs' ``(runs, N)`` when a run's particles are split across processes."""
    n, d = x.shape[0] // runs, x[0].numel()
    residual = ((x - x0_hat) ** 2).reshape(runs, n, -1).sum(-1)  # (runs, n)
    if gather is not None:
        residual = gather(residual)
    return (sigma**2 - residual.mean(1) / d).clamp(min=0).repeat_interleave(n)


def ancestral_step(
    x: Tensor,
    x0_hat: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """A draw of ``x_{sigma_next}`` from the bridge of :func:`ancestral_moments`: its mean plus
    ``sigma_next sqrt(1 - sigma_next^2 / sigma^2)`` times standard normal noise (the standard deviation
    written so, not as the square root of the variance, keeps the draws of earlier releases)."""
    mean, _ = ancestral_moments(x, x0_hat, sigma, sigma_next)
    std = sigma_next * (1 - (sigma_next / sigma) ** 2) ** 0.5
    return mean + std * randn(x.shape, generator, x.dtype, x.device)


def flow_velocity(denoise: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The probability-flow ODE's velocity ``dx/dsigma = (x - D(x, sigma)) / sigma`` of a denoiser ``D``
    (``sigma`` a number or one per row of ``x``)."""

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        return (x - denoise(x, sigma)) / per_row(torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.dim())

    return velocity


def heun_step(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, sigma: float | Tensor, sigma_next: float | Tensor
) -> Tensor:
    """One step of Heun's method on the ODE ``dx/dsigma = velocity(x, sigma)`` from ``sigma`` to ``sigma_next``.

    Karras et al. 2022, Algorithm 1 (with :func:`flow_velocity`, the prior's probability-flow ODE); falls
    back to Euler when ``sigma_next == 0``. Two velocity evaluations (one at the end). ``sigma`` and
    ``sigma_next`` are numbers or one per row of ``x`` (shape ``(n,)``).
    """
    step = per_row(torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device), x.dim()) - per_row(
        torch.as_tensor(sigma, dtype=x.dtype, device=x.device), x.dim()
    )
    d = velocity(x, sigma)
    x_euler = x + step * d
    if bool((torch.as_tensor(sigma_next) == 0).all()):
        return x_euler
    return x + step * 0.5 * (d + velocity(x_euler, sigma_next))
