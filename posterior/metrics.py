"""Distances between sample sets and an exact posterior: the yardstick every sampler is graded on.

A metric value means little alone: compare it with the *floor*, the same metric between two
independent exact sample sets of the same sizes (see :func:`floor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from posterior.utils import make_generator


def _flat(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(
            f"{name} must be a tensor of shape (n, *event_shape), got {tuple(getattr(x, 'shape', ()))}"
        )
    return x.reshape(x.shape[0], -1)


def _quantiles(sorted_proj: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile function (left-continuous inverse CDF) of sorted columns at ``levels``.

    The index is found by searching the CDF grid ``k / n`` built by the same division as ``levels``,
    so that a level equal to a grid point is matched exactly (``ceil(level * n)`` is off by one when
    ``level * n`` rounds up, e.g. ``0.07 * 100``).
    """
    n = sorted_proj.shape[0]
    grid = torch.arange(1, n + 1, dtype=torch.float64, device=levels.device) / n
    idx = torch.searchsorted(grid, levels).clamp(max=n - 1)
    return sorted_proj[idx]


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, num_directions: int = 1000, p: int = 1, seed: int = 0
) -> float:
    """Sliced Wasserstein-``p`` distance between two sample sets, with seeded random directions.

    ``SW_p^p = E_theta W_p^p(theta^T x, theta^T y)`` over directions uniform on the sphere; each 1-D
    Wasserstein distance is computed exactly from the quantile functions (the sets may differ in size).

    Parameters
    ----------
    x : Tensor, shape (n, *event_shape)
    y : Tensor, shape (m, *event_shape)
    num_directions : int
        Number of random directions (fixed by ``seed``, so two calls compare like with like).

    Returns
    -------
    float
    """
    xf, yf = _flat(x, "x").to(torch.float64), _flat(y, "y").to(torch.float64)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(f"x and y have different event sizes: {xf.shape[1]} and {yf.shape[1]}")
    gen, _ = make_generator(seed, "cpu")
    theta = torch.randn(xf.shape[1], num_directions, generator=gen, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(xf.device)
    px, _ = torch.sort(xf @ theta, dim=0)
    py, _ = torch.sort(yf.to(xf.device) @ theta, dim=0)
    if px.shape[0] == py.shape[0]:
        diff = px - py
        weights = None
    else:  # merge both quantile grids; integrate |F^-1 - G^-1|^p piecewise.
        levels = torch.unique(
            torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n for n in (px.shape[0], py.shape[0])])
        )
        weights = torch.diff(torch.cat([levels.new_zeros(1), levels])).to(xf.device)
        levels = levels.to(xf.device)
        diff = _quantiles(px, levels) - _quantiles(py, levels)
    cost = diff.abs() ** p
    per_direction = cost.mean(0) if weights is None else (weights[:, None] * cost).sum(0)
    return float(per_direction.mean() ** (1 / p))


def mode_weight_tv(
    samples: Tensor, mixture, weights: Tensor | None = None, target: Tensor | None = None
) -> float:
    """Total-variation error of the mode weights: ``0.5 * sum_k |p_hat_k - w_k|``.

    Each sample is assigned to the component of ``mixture`` (a ``GaussianMixture``, usually the exact
    posterior) with the largest responsibility at ``sigma = 0``; ``p_hat_k`` is the (weighted)
    fraction assigned to ``k``, compared with ``target`` (default ``mixture.weights``).

    Parameters
    ----------
    samples : Tensor, shape (n, *event_shape)
    weights : Tensor, shape (n,), optional
        Normalised sample weights (SMC); equal weights by default.
    """
    r = mixture.responsibilities(samples.to(device=mixture.device, dtype=mixture.dtype), 0.0)
    assign = torch.nn.functional.one_hot(r.argmax(1), r.shape[1]).to(torch.float64)
    w = (
        torch.full((samples.shape[0],), 1.0 / samples.shape[0], dtype=torch.float64)
        if weights is None
        else weights
    )
    p_hat = w.to(torch.float64).to(assign.device) @ assign
    target = mixture.weights if target is None else target
    return float(0.5 * (p_hat - target.to(torch.float64).to(p_hat.device)).abs().sum())


def mean_error(samples: Tensor, mean: Tensor) -> float:
    """Relative error ``||mean(samples) - mean|| / ||mean||`` (absolute when ``mean`` is 0)."""
    est = _flat(samples, "samples").to(torch.float64).mean(0)
    ref = mean.reshape(-1).to(torch.float64).to(est.device)
    scale = float(ref.norm())
    return float((est - ref).norm()) / (scale if scale > 0 else 1.0)


def covariance_error(samples: Tensor, covariance: Tensor) -> float:
    """Relative Frobenius error of the sample covariance against ``covariance`` of shape ``(d, d)``."""
    xf = _flat(samples, "samples").to(torch.float64)
    est = torch.cov(xf.T).reshape(xf.shape[1], xf.shape[1])
    ref = covariance.to(torch.float64).to(est.device)
    return float(torch.linalg.matrix_norm(est - ref) / torch.linalg.matrix_norm(ref))


def floor(
    metric: Callable[[Tensor, Tensor], float],
    exact_sampler: Callable[[int, int], Tensor],
    n: int,
    m: int,
    *,
    seeds: tuple[int, ...] = (1, 2, 3),
) -> float:
    """The floor of ``metric``: its mean over ``seeds`` between two independent exact sample sets of sizes ``n``, ``m``.

    ``exact_sampler(size, seed)`` draws exact samples.
    """
    values = [metric(exact_sampler(n, 2 * s), exact_sampler(m, 2 * s + 1)) for s in seeds]
    return sum(values) / len(values)


def psnr(estimate: Tensor, reference: Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``."""
    mse = float(((estimate.to(torch.float64) - reference.to(torch.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(data_range**2 / mse)).item()


def ssim(
    estimate: Tensor, reference: Tensor, data_range: float = 1.0, window: int = 11, std: float = 1.5
) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 2004) of images ``(..., H, W)``:
    local means, variances and covariance under a Gaussian window (``window`` pixels, ``std``),
    ``K1 = 0.01``, ``K2 = 0.03``, averaged over the valid region and the leading dimensions."""
    x = estimate.to(torch.float64).reshape(-1, 1, *estimate.shape[-2:])
    y = reference.to(torch.float64).reshape(-1, 1, *reference.shape[-2:]).to(x.device)
    t = torch.arange(window, dtype=torch.float64, device=x.device) - (window - 1) / 2
    g = torch.exp(-(t**2) / (2 * std**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]

    def blur(v: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(v, kernel)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(index.mean())


def standard_error(values: Tensor) -> float:
    """The standard error of the mean of ``values`` (shape ``(n,)``), ``std / sqrt(n)``; NaN for one value."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan

