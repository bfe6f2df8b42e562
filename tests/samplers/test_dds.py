"""DDS (posterior.samplers.DDS): its data-consistency solve and its step against closed forms.

With an isotropic Gaussian prior ``N(mu, s^2 I)``, ``x0`` given ``x_sigma`` is exactly ``N(x0_hat, r^2 I)``
with ``r^2 = sigma^2 s^2 / (sigma^2 + s^2)``, so DDS's solve with its default ``gamma = 1 / r^2``, run to
convergence, is the exact posterior mean ``E[x0 | x_sigma, y]``: the mean of the Gaussian posterior of
``x0`` given the two measurements ``y = A x0 + sigma_y n`` and ``x_sigma = x0 + sigma n'``.
"""

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import Gaussian
from posterior.samplers.dds import data_consistency

SIGMA_Y = 0.3


def gaussian_problem(d: int = 6, rows: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prior = Gaussian(torch.randn(d, generator=g, dtype=torch.float64), 2.0**2)
    A = ops.Matrix(torch.randn(rows, d, generator=g, dtype=torch.float64))
    noise = ops.GaussianNoise(SIGMA_Y)
    y = noise.sample(A(prior.sample(1, seed=g)), g)[0]
    return prior, post.InverseProblem(A, noise, y)


def test_data_consistency_is_the_proximal_solve():
    """``d`` CG steps solve ``(A^T A / sigma_y^2 + gamma I) x = A^T y / sigma_y^2 + gamma x0_hat`` to
    rounding; 0 steps return ``x0_hat``; 1 step lowers the objective without solving it."""
    prior, problem = gaussian_problem()
    A = problem.operator.matrix
    x0_hat = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gamma = 0.7
    normal = A.T @ A / SIGMA_Y**2 + gamma * torch.eye(6, dtype=torch.float64)
    direct = torch.linalg.solve(normal, (A.T @ problem.y / SIGMA_Y**2)[:, None] + gamma * x0_hat.T).T

    def objective(x):
        return ((x @ A.T - problem.y) ** 2).sum(1) / SIGMA_Y**2 + gamma * ((x - x0_hat) ** 2).sum(1)

    solved, runs = data_consistency(problem, x0_hat, gamma, 6)
    assert runs <= 6 and torch.allclose(solved, direct, atol=1e-9)
    assert torch.equal(data_consistency(problem, x0_hat, gamma, 0)[0], x0_hat)
    once = data_consistency(problem, x0_hat, gamma, 1)[0]
    assert bool((objective(once) < objective(x0_hat)).all())
    assert float((once - direct).abs().max()) > 1e-3


def exact_x0_mean(prior, problem, x_sigma, sigma):
    """``E[x0 | x_sigma, y]`` from the prior's closed-form posterior given both measurements."""
    A = problem.operator.matrix
    d = A.shape[1]
    stacked = ops.Matrix(torch.cat([A, torch.eye(d, dtype=A.dtype)]))
    noise = ops.GaussianNoise(torch.cat([torch.full((A.shape[0],), SIGMA_Y), torch.full((d,), float(sigma))]))
    means = [
        prior.posterior(post.InverseProblem(stacked, noise, torch.cat([problem.y, x]))).mean()
        for x in x_sigma
    ]
    return torch.stack(means)


def steps_seen(sampler, prior, problem):
    """The views of every step of one run of ``sampler``, and the run."""
    views = []
    result = sampler.sample(
        problem, prior, 8, seed=0, progress=False, callback=lambda i, view: views.append(dict(view))
    )
    return views, result


@pytest.mark.parametrize("cg_steps, gamma, exact", [(6, None, True), (1, None, False), (6, 1.0, False)])
def test_with_a_gaussian_prior_the_step_is_the_exact_posterior_mean_of_x0(cg_steps, gamma, exact):
    """At every noise level but the first, the corrected estimate equals ``E[x0 | x_sigma, y]`` computed
    independently (the input ``x_sigma`` is the previous step's output). Rejected: an unconverged solve
    (1 CG step in 6 dimensions) and a fixed ``gamma = 1``."""
    prior, problem = gaussian_problem()
    views, result = steps_seen(post.samplers.DDS(steps=6, cg_steps=cg_steps, gamma=gamma), prior, problem)
    sigmas = result.trace["sigma"]
    errors = [
        float(
            (views[i]["corrected"] - exact_x0_mean(prior, problem, views[i - 1]["x"], sigmas[i])).abs().max()
        )
        for i in range(1, len(views))
    ]
    assert (max(errors) < 1e-6) == exact, errors
    assert result.nfe == 6 and result.grad_evals == 0  # no vector-Jacobian products


def test_the_renoising_is_the_ddim_step():
    """With ``eta = 0`` each step ends at ``corrected + (sigma' / sigma) (x - x0_hat)`` exactly (the
    network's noise estimate carried to the next level); with ``eta = 1`` it does not (fresh noise)."""
    prior, problem = gaussian_problem()
    for eta, exact in ((0.0, True), (1.0, False)):
        views, result = steps_seen(post.samplers.DDS(steps=6, eta=eta), prior, problem)
        sigmas = [*result.trace["sigma"].tolist(), 0.0]
        errors = [
            float(
                (
                    views[i]["x"]
                    - views[i]["corrected"]
                    - sigmas[i + 1] / sigmas[i] * (views[i - 1]["x"] - views[i]["x0_hat"])
                )
                .abs()
                .max()
            )
            for i in range(1, len(views))
        ]
        assert (max(errors) < 1e-9) == exact, errors


def test_bad_input_is_refused():
    prior, problem = gaussian_problem()
    with pytest.raises(TypeError, match="DDS solves a least-squares problem"):
        post.samplers.DDS(steps=4).sample(
            post.InverseProblem(problem.operator, ops.PoissonNoise(1.0), problem.y.abs().round()), prior, 2
        )
    squared = ops.Function(lambda x: problem.operator(x) ** 2, (6,))
    with pytest.raises(TypeError, match="needs a linear operator with an adjoint and Gaussian noise"):
        post.samplers.DDS(steps=4).sample(post.InverseProblem(squared, problem.noise, problem.y**2), prior, 2)
    with pytest.raises(ValueError, match="eta must be in"):
        post.samplers.DDS(eta=1.5)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        post.samplers.DDS(gamma=0.0)
