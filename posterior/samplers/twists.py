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

from posterior.samplers.guidance import tempering
from posterior.samplers.linear_gaussian import LinearGaussianSVD
from posterior.samplers.smc import ParticleSampler
from posterior.utils import per_row, randn

LOG_2PI = math.log(2 * math.pi)


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
                var = self.lg.tau2 + self.kappa * sigma**2 / (
                    1 + sigma**2
                )  # kappa times pigdm_variance(sigma, 1)
                return self.lg.log_potential(self.lg.coords(x0_hat), var) + self.lg.log_const
            return tempering(sigma, self.tau_ref) * problem.log_likelihood(x0_hat)

        x0_hat, value, grad = prior.denoise_vjp(x, sigma, log_psi)
        return {"x0_hat": x0_hat, "log_psi": value, "grad": grad}


def guided_move(m: Tensor, v: Tensor, grad: Tensor, generator) -> tuple[Tensor, Tensor]:
    """Proposal ``x' = m + v g + sqrt(v) xi`` and ``log N(x'; m, v) - log N(x'; m + v g, v)`` (``v`` a
    number or one per particle).

    ``g`` is ``grad``, scaled down where the shift ``v |grad|`` would exceed the kernel's own noise
    ``sqrt(v d)``: a likelihood that explodes away from the data (Poisson with an exponential link at
    a noisy state) must not throw particles out; the weights stay exact for any ``g``. The ratio is
    ``-v |g|^2 / 2 - sqrt(v) g . xi`` per particle; ``v = 0`` gives ``x' = m`` and 0.
    """
    if bool((v == 0).all()):
        return m, m.new_zeros(m.shape[0])
    n = m.shape[0]
    g = grad.reshape(n, -1)
    vr = per_row(v, 2)  # a number, or one variance per particle (rows with v = 0 do not move)
    limit = (vr * g.shape[1]).sqrt()
    shift = (vr * g.norm(dim=1, keepdim=True)).clamp(min=limit)
    g = g * torch.where(
        shift > 0, limit / shift.clamp(min=torch.finfo(g.dtype).tiny), torch.zeros_like(shift)
    )
    xi = randn(g.shape, generator, m.dtype, m.device)
    x = m + (vr * g + vr.sqrt() * xi).reshape(m.shape)
    log_ratio = -0.5 * v * (g**2).sum(1) - v.sqrt() * (g * xi).sum(1)
    return x, log_ratio


class TwistedSampler(ParticleSampler):
    """A particle sampler whose particles carry a twist's evaluation: subclasses set ``self.twist`` in ``setup``.

    ``propagate`` is the gradient-guided ancestral step (``docs/derivations.md``): 1 NFE per
    particle, the weight increment ``log N(x'; m, v) - log N(x'; m + v g, v) + log psi_{sigma'}(x') -
    log psi_sigma(x)``.
    """

    def initialize(self, ctx, problem, prior, x, sigma):
        cache = ctx.evaluate(problem, prior, x, sigma)
        return cache, cache["log_psi"]

    def propagate(self, ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread):
        m, v = self.moments(x, cache["x0_hat"], sigma, sigma_next, spread)
        x_next, log_ratio = guided_move(m, v, cache["grad"], generator)
        new = ctx.evaluate(problem, prior, x_next, sigma_next)
        return x_next, new, log_ratio + new["log_psi"] - cache["log_psi"]
