"""Likelihood guidance through Tweedie's estimate, shared by the samplers.

At noise level ``sigma`` the prior's denoiser gives ``x0_hat = D(x, sigma) = E[x0 | x_sigma = x]``;
a data term ``g = grad_x log p_sigma(y | x)`` (approximated) moves it to the posterior's
``x0_hat + sigma^2 g`` (:func:`posterior_tweedie`, Tweedie's formula for the posterior score).
The approximations of ``p_sigma(y | x)`` the samplers use:

- DPS: ``p(y | x0_hat)``, differentiated through the network (:func:`tweedie_guidance`);
- PiGDM: ``N(y; A x0_hat, sigma_y^2 I + r^2 A A^T)``, ``r^2 = sigma^2 s_d^2 / (sigma^2 + s_d^2)``
  (:func:`pigdm_variance`; Song et al., ICLR 2023), also through the network;
- noisy (projection): ``N(y; A x, sigma_y^2 I + sigma^2 A A^T)`` at the noisy state, no network Jacobian;
- tempered: ``p(y | x)^beta(sigma)``, ``beta = 1 / (1 + sigma^2 / tau_ref^2)`` (:func:`tempering`),
  ``tau_ref`` the likelihood's width (:func:`likelihood_scale`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from posterior.utils import per_row


def tweedie_guidance(
    problem, prior, x: Tensor, sigma: Tensor, objective: str | Callable
) -> tuple[Tensor, Tensor]:
    """Tweedie estimate ``x0_hat = D(x, sigma)`` and the gradient, through the denoiser, of a data term at it.

    ``objective="likelihood"`` differentiates ``log p(y | x0_hat)``; ``"residual"`` differentiates
    ``-||y - A(x0_hat)||_2`` per sample (the DPS paper's normalised step); a callable
    ``objective(x0_hat) -> (n,)`` is differentiated as it is. One NFE and one vector-Jacobian product.

    Returns
    -------
    x0_hat : Tensor, shape (n, *event_shape), detached
    grad : Tensor, shape (n, *event_shape)
    """
    if callable(objective):
        value = objective
    elif objective == "likelihood":
        value = problem.log_likelihood
    else:

        def value(x0_hat):
            residual = problem.y - problem.operator(x0_hat)
            return -torch.sqrt(
                (residual.reshape(x0_hat.shape[0], -1) ** 2).sum(1) + torch.finfo(x0_hat.dtype).tiny
            )

    x0_hat, _, grad = prior.denoise_vjp(x, sigma, value)
    return x0_hat, grad


def posterior_tweedie(
    x0_hat: Tensor, grad: Tensor, sigma: float | Tensor, scale: float | Tensor = 1.0
) -> Tensor:
    """Tweedie's estimate under the posterior, ``x0_hat + sigma^2 scale grad`` (``sigma`` a number or one
    per row; ``scale`` a step size, 1 for the plain formula, or a tensor broadcastable to ``grad``)."""
    return x0_hat + per_row(torch.as_tensor(sigma), x0_hat.dim()) ** 2 * scale * grad


def pigdm_variance(sigma: Tensor, sigma_data: float) -> Tensor:
    """``r^2 = sigma^2 s_d^2 / (sigma^2 + s_d^2)``: the variance of ``x0 | x_sigma`` for data of variance
    ``s_d^2`` per coordinate (a Gaussian), PiGDM's covariance of Tweedie's estimate."""
    return sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)


def gaussian_data_fit(problem, x: Tensor, variance: Tensor | float) -> Tensor:
    """``log N(y; A(x), variance)`` per sample up to a constant in ``x``, shape ``(n,)``."""
    residual = problem.y - problem.operator(x)
    return -0.5 * (residual**2 / variance).reshape(x.shape[0], -1).sum(1)


def likelihood_scale(
    problem, x: Tensor, iters: int = 30, remedy: str = "set tempering_scale explicitly"
) -> float:
    """``tau_ref = 1 / sqrt(lambda_max)``, ``lambda_max`` the largest curvature of ``-log p(y | x)`` at ``x``.

    Power iteration on Hessian-vector products (double backprop; no network). For ``y = A x + sigma_y n``
    it is ``sigma_y / ||A||_2``: the noise level below which the likelihood dominates the prior.
    """
    x = x.detach()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x)
    curvature = 0.0
    for _ in range(iters):
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(problem.log_likelihood(xg).sum(), xg, create_graph=True)
            (hv,) = torch.autograd.grad((g * v).sum(), xg)
        hv = -hv
        curvature = float((hv * v).sum() / (v * v).sum())
        norm = float(hv.norm())
        if not norm > 0 or not math.isfinite(norm):
            break
        v = hv / norm
    if not math.isfinite(curvature):
        raise ValueError(
            "the forward model or the likelihood is not finite (or not differentiable) at the prior mean; "
            "check the operator's domain"
        )
    if not abs(curvature) > 0:
        raise ValueError(
            f"the likelihood ({type(problem.noise).__name__}) has no curvature at the prior mean; {remedy}"
        )
    return 1.0 / math.sqrt(abs(curvature))


def default_tempering_scale(problem, prior, tempering_scale: float | None, who: str | None = None) -> float:
    """``tempering_scale`` or, if None, the likelihood's width at the prior mean (1 NFE). ``who``: a
    sampler without a ``tempering_scale`` setting, named when the width cannot be estimated."""
    if tempering_scale is not None:
        return tempering_scale
    shape = (problem.y.shape[0] if problem.batched else 1, *prior.event_shape)
    mean = prior.denoise(problem.y.new_zeros(shape), prior.sigma_max)
    if who is None:
        return likelihood_scale(problem, mean)
    remedy = f"{who} needs a likelihood with curvature (e.g. GaussianNoise or StudentTNoise), or use AFDPS or TDS with tempering_scale"
    return likelihood_scale(problem, mean, remedy=remedy)


def tempering(sigma: Tensor, tau_ref: float) -> Tensor:
    """``beta(sigma) = 1 / (1 + sigma^2 / tau_ref^2)``: 1 at ``sigma = 0``, flat at large ``sigma``."""
    return 1.0 / (1.0 + sigma**2 / tau_ref**2)
