"""Fixtures of the sampler tests: a separated-mode problem and the mode-weight test of the SMC starts."""

import pytest
import torch

import operators as ops
import posterior as post


def separated_problem():
    """``GaussianMixture.grid(4, seed=0)`` (25 unit modes, spacing 8) with 2 rows, noise 0.5: the exact
    posterior has 4 separated modes of weights 0.34, 0.33, 0.21, 0.11 (the rest below 0.01)."""
    from posterior.priors import GaussianMixture

    prior = GaussianMixture.grid(4, seed=0)
    g = torch.Generator().manual_seed(0)
    A = ops.Matrix(torch.randn(2, 4, generator=g, dtype=torch.float64) / 2)
    noise = ops.GaussianNoise(0.5)
    y = noise.sample(A(prior.sample(1, seed=g)), g)[0]
    problem = post.InverseProblem(A, noise, y)
    return prior, problem, prior.posterior(problem)


def mode_weight_z(draws, exact, groups: int, particles: int) -> float:
    """Largest ``|p_hat_k - w_k| / se_k`` over the modes, ``p_hat_k`` the fraction of ``draws`` assigned to
    mode ``k`` (largest responsibility). The draws come in ``groups`` independent groups (chains whose
    draws share a mode; independent draws for LML), each from a population of ``particles`` particles
    in all: ``se_k^2 = v_k (1 / groups + 2 / particles)``, the multinomial variance of the groups plus
    the population's (its weights' effective size taken as half its particles), ``v_k = w_k (1 - w_k)``
    floored at ``1 / groups`` (one stray group in a mode of weight 0 is 1 standard error, not infinitely
    many)."""
    assign = exact.responsibilities(draws, 0.0).argmax(1)
    p_hat = torch.bincount(assign, minlength=exact.num_components).double() / draws.shape[0]
    w = exact.weights
    se = ((w * (1 - w)).clamp(min=1 / groups) * (1 / groups + 2 / particles)).sqrt()
    return float(((p_hat - w).abs() / se).max())


def one_particle(W, u):  # broken: every start is the population's first particle
    return torch.zeros(u.shape, dtype=torch.long)


@pytest.fixture
def separated_modes():
    """``(separated_problem, mode_weight_z, one_particle)``: the problem factory, the mode-weight z of a
    set of draws, and a broken inverse CDF that always picks the first particle."""
    return separated_problem, mode_weight_z, one_particle
