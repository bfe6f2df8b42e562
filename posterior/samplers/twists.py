"""Twists for the particle samplers: intermediate potentials ``psi_sigma`` that end at the likelihood.

A twisted SMC sampler targets ``pi_sigma(x) ∝ p_sigma(x) psi_sigma(x)`` at every noise level, with
``psi_0(x) = p(y | x)``, so that its last target is the posterior whatever the twist; the twist only
decides the variance of the weights. Every twist returns, at particles ``x`` and level ``sigma``, the
Tweedie estimate ``x0_hat = D(x, sigma)`` (one NFE; the next kernel needs it), ``log psi_sigma(x)``
and a guidance vector ``grad`` (``grad log psi``; any vector keeps the weights exact).

Linear-Gaussian problems ``y = A x + sigma_y n`` are seen in the SVD basis ``A = U diag(s) V^T``: the
observed coordinates ``xbar = V^T x`` have pseudo-observations ``u_j = (U^T y)_j / s_j`` with noise
variance ``tau_j^2 = sigma_y^2 / s_j^2``, and ``log p(y | x) = sum_j log N(u_j; xbar_j, tau_j^2) + c(y)``.

The twists (``docs/derivations.md``):

- ``noisy``: ``psi_sigma(x) = N(y; A x, sigma_y^2 I + sigma^2 A A^T)``, i.e. ``N(u_j; xbar_j, tau_j^2 + sigma^2)``;
- ``tweedie``: ``N(y; A x0_hat, sigma_y^2 I + A C A^T)`` with ``C = sigma^2 dx0_hat/dx`` the
  second-order Tweedie covariance of ``x0 | x_sigma``: wide while the mode is undecided, sharp once
  it is (``r`` vector-Jacobian products per step, ``r`` the rank of ``A``);
- ``tempered``: ``p(y | x)^beta(sigma)``, ``beta = 1 / (1 + sigma^2 / tau_ref^2)``, any likelihood;
  ``clean`` is ``beta = 1`` (the AFDPS paper's potential);
- ``tds``: ``N(y; A x0_hat, sigma_y^2 I + kappa r^2 A A^T)``, ``r^2 = sigma^2 / (1 + sigma^2)`` (TDS with
  the PiGDM variance), or ``p(y | x0_hat)^beta(sigma)`` for other problems; its gradient goes
  through the network (one vector-Jacobian product).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from operators import GaussianNoise, LinearOperator
from operators.base import SVD
from posterior.samplers.smc import ParticleSampler
from posterior.utils import randn

LOG_2PI = math.log(2 * math.pi)


@dataclass
class LinearGaussianSVD:
    """A linear-Gaussian problem in the SVD basis of its operator.

    Attributes
    ----------
    svd : operators.base.SVD
    u : Tensor, shape (1 or n, r)
        Pseudo-observations ``(U^T y)_j / s_j`` (one row per particle for a batched ``y``).
    tau2 : Tensor, shape (r,)
        Their noise variances ``sigma_y^2 / s_j^2``.
    log_const : Tensor, shape (1 or n,)
        ``log p(y | x) - sum_j log N(u_j; xbar_j, tau_j^2)``: the Jacobian ``-sum log s_j`` and the
        part of ``y`` outside the range of ``A``.
    """

    svd: SVD
    u: Tensor
    tau2: Tensor
    log_const: Tensor

    @classmethod
    def of(cls, problem, who: str) -> LinearGaussianSVD:
        """Build it, or raise a ``ValueError`` naming ``who`` if the problem is not linear-Gaussian with one noise level."""
        if not isinstance(problem.operator, LinearOperator) or not isinstance(problem.noise, GaussianNoise):
            raise ValueError(
                f"{who} needs a linear operator with Gaussian noise (it works in the operator's SVD basis); "
                f"got {type(problem.operator).__name__} with {type(problem.noise).__name__}. "
                "Use AFDPS or TDS for non-linear operators and other noise models."
            )
        sigma_y = problem.noise.sigma
        if sigma_y.numel() > 1 and not bool((sigma_y == sigma_y.reshape(-1)[0]).all()):
            raise ValueError(
                f"{who} needs one noise level sigma_y for all measurements, got a per-element sigma"
            )
        y = problem.y
        dtype, device = y.dtype, y.device
        svd = problem.operator.svd()
        s = svd.s.to(dtype=dtype, device=device)
        sigma2 = float(sigma_y.reshape(-1)[0]) ** 2
        ys = y.reshape(-1, *problem.operator.out_shape)
        coeffs = svd.ut(ys)  # (1 or n, r)
        outside = (ys.reshape(ys.shape[0], -1) ** 2).sum(1) - (coeffs**2).sum(1)
        m, r = ys[0].numel(), s.numel()
        log_const = (
            -torch.log(s).sum()
            - 0.5 * (m - r) * math.log(2 * math.pi * sigma2)
            - outside.clamp(min=0) / (2 * sigma2)
        )
        return cls(svd=svd, u=coeffs / s, tau2=sigma2 / s**2, log_const=log_const)

    def coords(self, x: Tensor) -> Tensor:
        """Observed coordinates ``V^T x``: ``(n, *event_shape) -> (n, r)``."""
        return self.svd.vt(x)

    def with_coords(self, x: Tensor, coords: Tensor) -> Tensor:
        """``x`` with its observed coordinates replaced by ``coords`` (the null-space part kept)."""
        return x + self.svd.v(coords - self.svd.vt(x))

    def log_potential(self, coords: Tensor, var: Tensor) -> Tensor:
        """``sum_j log N(u_j; coords_j, var_j)`` over the coordinates with ``0 < var_j < inf``: ``(n,)``."""
        active = torch.isfinite(var) & (var > 0)
        safe = torch.where(active, var, torch.ones_like(var))
        terms = -0.5 * (self.u - coords) ** 2 / safe - 0.5 * torch.log(2 * math.pi * safe)
        return torch.where(active, terms, torch.zeros_like(terms)).sum(-1)

    def product_move(self, m: Tensor, v: Tensor, var_next: Tensor, generator) -> tuple[Tensor, Tensor]:
        """Draw from ``N(m, v I) x prod_j N(u_j; xbar_j, var_next_j)`` exactly (the locally optimal proposal).

        Observed coordinates with ``var_next = inf`` move freely, with ``var_next = 0`` are pinned to
        ``u_j``. Returns the new particles and ``log`` of the normaliser,
        ``sum_j log N(u_j; mbar_j, v + var_next_j)`` over the constrained coordinates.
        """
        v = torch.as_tensor(v, dtype=m.dtype, device=m.device)
        x = m + v.sqrt() * randn(m.shape, generator, m.dtype, m.device)
        mbar = self.coords(m)
        free = ~torch.isfinite(var_next)
        w = torch.where(free, torch.ones_like(var_next), var_next)
        total = v + w
        mean = torch.where(free, mbar, (w * mbar + v * self.u) / total)
        var = torch.where(free, v.expand_as(w), v * w / total)
        coords = mean + var.sqrt() * randn(mean.shape, generator, m.dtype, m.device)
        log_norm = -0.5 * (self.u - mbar) ** 2 / total - 0.5 * torch.log(2 * math.pi * total)
        log_norm = torch.where(free, torch.zeros_like(log_norm), log_norm).sum(-1)
        return self.with_coords(x, coords), log_norm


def likelihood_scale(problem, x: Tensor, iters: int = 30, remedy: str = "set tempering_scale explicitly") -> float:
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
        raise ValueError(f"the likelihood ({type(problem.noise).__name__}) has no curvature at the prior mean; {remedy}")
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


class Twist:
    """``evaluate(problem, prior, x, sigma) -> {"x0_hat", "log_psi", "grad"}`` for particles ``x``."""

    def evaluate(self, problem, prior, x: Tensor, sigma: Tensor) -> dict:
        if float(sigma) == 0:
            return {"x0_hat": x, "log_psi": problem.log_likelihood(x), "grad": torch.zeros_like(x)}
        return self.at_noise(problem, prior, x, sigma)


@dataclass
class NoisyTwist(Twist):
    """``psi_sigma = N(y; A x, sigma_y^2 I + sigma^2 A A^T)``; 1 NFE (for the kernel), no backprop."""

    lg: LinearGaussianSVD

    def variance(self, sigma: Tensor) -> Tensor:
        return self.lg.tau2 + sigma**2

    def at_noise(self, problem, prior, x, sigma):
        coords, var = self.lg.coords(x), self.variance(sigma)
        return {
            "x0_hat": prior.denoise(x, sigma),
            "log_psi": self.lg.log_potential(coords, var) + self.lg.log_const,
            "grad": self.lg.svd.v((self.lg.u - coords) / var),
        }


@dataclass
class TemperedTwist(Twist):
    """``psi_sigma = p(y | x)^beta(sigma)`` (``beta = 1``: the clean likelihood); 1 NFE, no network backprop."""

    tau_ref: float | None  # None: the clean likelihood at every sigma

    def at_noise(self, problem, prior, x, sigma):
        beta = 1.0 if self.tau_ref is None else tempering(sigma, self.tau_ref)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_lik = problem.log_likelihood(xg)
            (grad,) = torch.autograd.grad(log_lik.sum(), xg)
        return {"x0_hat": prior.denoise(x, sigma), "log_psi": beta * log_lik.detach(), "grad": beta * grad}


@dataclass
class TweedieTwist(Twist):
    """``psi_sigma = N(u; V^T x0_hat, diag(tau^2) + sigma^2 V^T J V)``, ``J = dx0_hat/dx`` (symmetrised, clipped to PSD).

    1 NFE and ``r`` vector-Jacobian products ``J^T v_j``, which also give the guidance: the gradient of
    ``log psi`` with the covariance held fixed, ``J^T V S^-1 (u - V^T x0_hat)``.
    """

    lg: LinearGaussianSVD

    def at_noise(self, problem, prior, x, sigma):
        r = self.lg.tau2.numel()
        directions = self.lg.svd.v(torch.eye(r, dtype=x.dtype, device=x.device))  # (r, *event_shape)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0_hat = prior.denoise(xg, sigma)
            jtv = torch.stack(
                [
                    torch.autograd.grad(x0_hat, xg, directions[j].expand_as(x), retain_graph=j < r - 1)[0]
                    for j in range(r)
                ],
                1,
            )  # (n, r, *event_shape): J^T v_j
        prior.grad_evals += r
        x0_hat = x0_hat.detach()
        M = self.lg.coords(jtv.reshape(-1, *x.shape[1:])).reshape(x.shape[0], r, r)
        eigvals, eigvecs = torch.linalg.eigh(0.5 * (M + M.transpose(1, 2)))
        M = (eigvecs * eigvals.clamp(min=0)[:, None, :]) @ eigvecs.transpose(1, 2)
        L = torch.linalg.cholesky(torch.diag_embed(self.lg.tau2.expand(x.shape[0], r)) + sigma**2 * M)
        resid = (self.lg.u - self.lg.coords(x0_hat)).unsqueeze(-1)
        white = torch.linalg.solve_triangular(L, resid, upper=False)[..., 0]
        log_psi = (
            -0.5 * (white**2).sum(-1)
            - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
            - 0.5 * r * LOG_2PI
        )
        a = torch.cholesky_solve(resid, L)[..., 0]  # S^-1 (u - V^T x0_hat), (n, r)
        grad = torch.einsum("nr,nr...->n...", a, jtv)
        return {"x0_hat": x0_hat, "log_psi": log_psi + self.lg.log_const, "grad": grad}


@dataclass
class TDSTwist(Twist):
    """``N(y; A x0_hat, sigma_y^2 I + kappa r^2 A A^T)`` (linear-Gaussian) or ``p(y | x0_hat)^beta(sigma)``.

    1 NFE and 1 vector-Jacobian product through the network.
    """

    lg: LinearGaussianSVD | None
    kappa: float
    tau_ref: float | None

    def at_noise(self, problem, prior, x, sigma):
        def log_psi(x0_hat):
            if self.lg is not None:
                var = self.lg.tau2 + self.kappa * sigma**2 / (1 + sigma**2)
                return self.lg.log_potential(self.lg.coords(x0_hat), var) + self.lg.log_const
            return tempering(sigma, self.tau_ref) * problem.log_likelihood(x0_hat)

        x0_hat, value, grad = prior.denoise_vjp(x, sigma, log_psi)
        return {"x0_hat": x0_hat, "log_psi": value, "grad": grad}


def guided_move(m: Tensor, v: Tensor, grad: Tensor, generator) -> tuple[Tensor, Tensor]:
    """Proposal ``x' = m + v g + sqrt(v) xi`` and ``log N(x'; m, v) - log N(x'; m + v g, v)``.

    ``g`` is ``grad``, scaled down where the shift ``v |grad|`` would exceed the kernel's own noise
    ``sqrt(v d)``: a likelihood that explodes away from the data (Poisson with an exponential link at
    a noisy state) must not throw particles out; the weights stay exact for any ``g``. The ratio is
    ``-v |g|^2 / 2 - sqrt(v) g . xi`` per particle; ``v = 0`` gives ``x' = m`` and 0.
    """
    if float(v) == 0:
        return m, m.new_zeros(m.shape[0])
    n = m.shape[0]
    g = grad.reshape(n, -1)
    limit = (v * g.shape[1]).sqrt()
    g = g * (limit / (v * g.norm(dim=1, keepdim=True)).clamp(min=limit))
    xi = randn(g.shape, generator, m.dtype, m.device)
    x = m + (v * g + v.sqrt() * xi).reshape(m.shape)
    log_ratio = -0.5 * v * (g**2).sum(1) - v.sqrt() * (g * xi).sum(1)
    return x, log_ratio


def ancestral_kernel(x: Tensor, x0_hat: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of the prior's ancestral (DDPM) step in VE: ``x0_hat + (s'^2/s^2)(x - x0_hat)``,
    ``s'^2 (1 - s'^2/s^2)``; zero variance on the step to ``sigma = 0``."""
    ratio = (sigma_next / sigma) ** 2
    return x0_hat + ratio * (x - x0_hat), sigma_next**2 * (1 - ratio)


class TwistedSampler(ParticleSampler):
    """A particle sampler whose particles carry a twist's evaluation: subclasses set ``self.twist`` in ``setup``.

    ``propagate`` is the gradient-guided ancestral step (``docs/derivations.md``): 1 NFE per
    particle, the weight increment ``log N(x'; m, v) - log N(x'; m + v g, v) + log psi_{sigma'}(x') -
    log psi_sigma(x)``.
    """

    def initialize(self, ctx, problem, prior, x, sigma):
        cache = ctx.evaluate(problem, prior, x, sigma)
        return cache, cache["log_psi"]

    def propagate(self, ctx, problem, prior, x, cache, sigma, sigma_next, generator):
        m, v = ancestral_kernel(x, cache["x0_hat"], sigma, sigma_next)
        x_next, log_ratio = guided_move(m, v, cache["grad"], generator)
        new = ctx.evaluate(problem, prior, x_next, sigma_next)
        return x_next, new, log_ratio + new["log_psi"] - cache["log_psi"]
