"""Levenberg-Marquardt-Langevin: the preconditioned step, its Metropolis adjustment, the annealed sampler."""

import math

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture
from posterior.samplers.lml import Preconditioner, lml_step, log_proposal, reshape_direction


def test_zero_factor_is_plain_langevin():
    """v = 0 (rank one, guarded) and no factor both give x + (h/lam) s + sqrt(2h/lam) xi, bit for bit."""
    x = torch.randn(5, 3, dtype=torch.float64)
    s = torch.randn(5, 3, dtype=torch.float64)
    lam, h = torch.tensor(4.0, dtype=torch.float64), 0.1
    xi = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    plain = x + (h / lam) * s + math.sqrt(2 * h / lam) * xi
    for P in (Preconditioner(lam), Preconditioner.rank_one(lam, torch.zeros_like(x))):
        out = lml_step(x, s, P, h, torch.Generator().manual_seed(7))
        assert torch.allclose(out, plain, rtol=0, atol=1e-15)


def test_rank_one_preconditioner_matches_the_dense_inverse_and_square_root():
    v = torch.randn(2, 4, dtype=torch.float64)
    lam = torch.tensor(0.7, dtype=torch.float64)
    P = Preconditioner.rank_one(lam, v)
    u = torch.randn(2, 4, dtype=torch.float64)
    for i in range(2):
        dense = torch.linalg.inv(lam * torch.eye(4, dtype=torch.float64) + torch.outer(v[i], v[i]))
        assert torch.allclose(P.apply(u)[i], dense @ u[i])
        root = torch.stack([P.sqrt(torch.eye(4, dtype=torch.float64)[k].expand(2, 4))[i] for k in range(4)])
        assert torch.allclose(root @ root.T, dense)


def test_metropolis_adjusted_chain_matches_a_stiff_gaussian():
    """Target N(m, C) in d = 4 with a stiff direction (variance 0.01) and a constant Gauss-Newton factor
    along it; 4000 chains, 300 MALA steps with h = 0.3. The final states' mean is within 4 standard
    errors of m and every covariance entry within 4 standard errors (sqrt((C_ii C_jj + C_ij^2)/n))."""
    d, n = 4, 4000
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    variances = torch.tensor([0.01, 1.0, 1.0, 2.0], dtype=torch.float64)
    C = q @ torch.diag(variances) @ q.T
    precision = torch.linalg.inv(C)
    m = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)

    def log_target(x):
        r = x - m
        return -0.5 * ((r @ precision) * r).sum(1)

    def score(x):
        return -(x - m) @ precision

    lam = torch.tensor(1.0, dtype=torch.float64)
    v = q[:, 0] * (1 / 0.01 - 1) ** 0.5  # lam I + v v^T = C^-1 along the stiff direction
    unit = q[:, :1]
    P = Preconditioner(lam, (v**2).sum(0, keepdim=True), lambda x: x @ unit, lambda z: z @ unit.T)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    h, accepted = 0.3, 0
    for _ in range(300):
        s = score(x)
        proposal = lml_step(x, s, P, h, g)
        log_alpha = (
            log_target(proposal)
            - log_target(x)
            + log_proposal(x, proposal, score(proposal), P, h)
            - log_proposal(proposal, x, s, P, h)
        )
        accept = torch.log(torch.rand(n, generator=g, dtype=torch.float64)) < log_alpha
        x = torch.where(accept[:, None], proposal, x)
        accepted += int(accept.sum())
    assert accepted / (300 * n) > 0.5
    assert bool(((x.mean(0) - m).abs() < 4 * (C.diagonal() / n).sqrt()).all())
    se = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C**2) / n).sqrt()
    assert bool(((torch.cov(x.T) - C).abs() < 4 * se).all()), torch.cov(x.T) - C


def test_direction_reshaping_keeps_the_norm_and_kappa_zero_is_the_identity():
    g = torch.randn(3, 5, dtype=torch.float64)
    previous = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(reshape_direction(g, previous, 0.0, 1e-3), g)
    out = reshape_direction(g, previous, 0.5, 1e-3)
    assert torch.allclose(out.norm(dim=1), g.norm(dim=1))
    assert not torch.allclose(out, g)


@pytest.mark.parametrize("metropolis", [False, True])
def test_annealed_sampler_on_overlapping_modes(metropolis, overlapping_problem):
    """Overlapping 10-mode mixture, one row: 1000 draws at 50 levels are within 3x the sliced-Wasserstein
    floor (measured 1.4x unadjusted, 1.0x with Metropolis; separated modes: 13-15x, see docs)."""
    prior, problem = overlapping_problem()
    exact = prior.posterior(problem)
    sampler = post.samplers.LevenbergMarquardtLangevin(
        steps=50, metropolis=metropolis, corrector_steps=1 + metropolis
    )
    result = sampler.sample(problem, prior, 1000, seed=0, progress=False)
    draws = result.flat()
    floor = post.metrics.floor(
        post.metrics.sliced_wasserstein, lambda k, s: exact.sample(k, seed=s), 1000, 1000
    )
    assert post.metrics.sliced_wasserstein(draws, exact.sample(1000, seed=999)) < 3 * floor
    if metropolis:
        assert 0.3 < float(result.trace["acceptance"]) <= 1


def test_runs_on_a_nonlinear_problem_and_checks_its_arguments():
    prior = GaussianMixture.random(4, num_components=3, seed=0)
    op = ops.Function(lambda x: x**2, (4,), (4,))
    noise = ops.GaussianNoise(0.1)
    y = noise.sample(op(prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(op, noise, y)
    result = post.samplers.LevenbergMarquardtLangevin(steps=10).sample(
        problem, prior, 8, seed=0, progress=False
    )
    assert bool(torch.isfinite(result.samples).all()) and result.grad_evals > 0
    with pytest.raises(ValueError, match="linear-Gaussian"):
        post.samplers.LevenbergMarquardtLangevin(steps=5, metropolis=True).sample(
            problem, prior, 2, seed=0, progress=False
        )
    for bad in ({"steps": 1}, {"step_size": 0}, {"kappa": 1.0}, {"corrector_steps": -1}):
        with pytest.raises(ValueError):
            post.samplers.LevenbergMarquardtLangevin(**bad)
