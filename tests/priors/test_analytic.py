"""Exact analytic priors: Gaussian mixtures against autograd, textbook formulas, Bayes' rule and Monte Carlo.

Statistical checks use fixed seeds and a tolerance of 5 Monte-Carlo standard errors (formulas beside them).
"""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from operators.base import Function, Matrix
from operators.noise import GaussianNoise, LaplaceNoise
from posterior.priors.analytic import Gaussian, GaussianMixture
from posterior.problem import InverseProblem

F64 = torch.float64
SIGMAS = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


def mixture(kind: str, event_shape=(3,), k: int = 3, seed: int = 0) -> GaussianMixture:
    return GaussianMixture.random(
        math.prod(event_shape),
        k,
        separation=3.0,
        std=1.0,
        seed=seed,
        covariance=kind,
        event_shape=event_shape,
    )


def noised_points(prior: GaussianMixture, sigma, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x0 = prior.sample(n, seed=gen)
    s = torch.as_tensor(sigma, dtype=F64).reshape(-1, *([1] * len(prior.event_shape)))
    return x0 + s * torch.randn(x0.shape, generator=gen, dtype=F64)


def autograd_score(prior: GaussianMixture, x: torch.Tensor, sigma) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(x, sigma).sum(), x)
    return grad


def linear_problem(d: int, m: int, prior: GaussianMixture, sigma_y, seed: int = 2) -> InverseProblem:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(m, d, generator=gen, dtype=F64) / math.sqrt(d)
    op = Matrix(A, in_shape=prior.event_shape)
    noise = GaussianNoise(sigma_y)
    x_true = prior.sample(1, seed=gen)
    y = noise.sample(op(x_true), gen)[0]
    return InverseProblem(op, noise, y)


# -- denoiser and score --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["scalar", "diagonal", "full"])
@pytest.mark.parametrize("event_shape", [(3,), (1, 4, 4)])
def test_denoise_is_tweedie_of_log_prob(kind, event_shape):
    prior = mixture(kind, event_shape)
    for sigma in SIGMAS:
        x = noised_points(prior, sigma, 8)
        tweedie = x + sigma**2 * autograd_score(prior, x, sigma)
        torch.testing.assert_close(prior.denoise(x, sigma), tweedie, atol=1e-6, rtol=0)
    # one noise level per sample
    sigma = torch.tensor(SIGMAS, dtype=F64)
    x = noised_points(prior, sigma, len(SIGMAS))
    tweedie = x + sigma.reshape(-1, *([1] * len(event_shape))) ** 2 * autograd_score(prior, x, sigma)
    torch.testing.assert_close(prior.denoise(x, sigma), tweedie, atol=1e-6, rtol=0)
    per_level = torch.cat([prior.denoise(x[i : i + 1], float(s)) for i, s in enumerate(sigma)])
    torch.testing.assert_close(prior.denoise(x, sigma), per_level, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "full"])
def test_score_matches_autograd_including_sigma_zero(kind):
    prior = mixture(kind, (1, 4, 4))
    for sigma in (0.0, *SIGMAS):
        x = noised_points(prior, sigma, 6)
        expected = autograd_score(prior, x, sigma)
        torch.testing.assert_close(prior.score(x, sigma), expected, atol=1e-10, rtol=1e-8)


def test_denoise_limits():
    prior = mixture("full")
    x = noised_points(prior, 1e-4, 5)
    torch.testing.assert_close(prior.denoise(x, 1e-6), x, atol=1e-9, rtol=0)
    # responsibilities are a probability vector at every sigma
    r = prior.responsibilities(noised_points(prior, 1.0, 7), 1.0)
    assert r.shape == (7, 3) and bool((r >= 0).all())
    torch.testing.assert_close(r.sum(1), torch.ones(7, dtype=F64))


def test_noised_matches_log_prob_at_sigma():
    prior = mixture("full")
    x = noised_points(prior, 2.0, 5)
    torch.testing.assert_close(prior.noised(2.0).log_prob(x), prior.log_prob(x, 2.0))
    torch.testing.assert_close(
        prior.noised(2.0).covariance(), prior.covariance() + 4.0 * torch.eye(3, dtype=F64)
    )
    diag = mixture("diagonal")
    torch.testing.assert_close(diag.noised(0.5).log_prob(x), diag.log_prob(x, 0.5))


# -- exact sampling and moments -----------------------------------------------------------------------
def test_exact_samples_match_moments_and_weights():
    prior = mixture("full", (3,), k=4)
    n = 40_000
    x = prior.sample(n, seed=0)
    mu, cov = prior.mean(), prior.covariance()
    # mean: SE_j = sqrt(Cov_jj / n)
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert bool(((x.mean(0) - mu).abs() <= 5 * se_mean).all())
    # covariance entry (j, k) with the known mean: SE_jk = sd((x_j - mu_j)(x_k - mu_k)) / sqrt(n)
    prod = (x - mu)[:, :, None] * (x - mu)[:, None, :]
    se_cov = prod.std(0) / math.sqrt(n)
    assert bool(((prod.mean(0) - cov).abs() <= 5 * se_cov).all())
    # E[r_i(x)] = w_i exactly for x from the prior; SE_i = sd(r_i) / sqrt(n)
    r = prior.responsibilities(x)
    assert bool(((r.mean(0) - prior.weights).abs() <= 5 * r.std(0) / math.sqrt(n)).all())
    # the same seed gives the same draws
    torch.testing.assert_close(prior.sample(10, seed=3), prior.sample(10, seed=3), atol=0, rtol=0)


def test_mean_and_covariance_formulas():
    prior = mixture("diagonal", (4,), k=5)
    w, m, S = prior.weights, prior.means, prior.covariance_matrices()
    mu = w @ m
    second = torch.einsum("k,kij->ij", w, S + m[:, :, None] * m[:, None, :])
    torch.testing.assert_close(prior.mean(), mu)
    torch.testing.assert_close(prior.covariance(), second - torch.outer(mu, mu))


def test_sample_with_steps_uses_the_reverse_diffusion():
    prior = Gaussian(torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64))
    n = 4000
    x = prior.sample(n, seed=0, steps=40)
    assert x.shape == (n, 2)
    torch.testing.assert_close(x, prior.sample(n, seed=0, steps=40), atol=0, rtol=0)
    # mean within 5 SE (SE = sqrt(var / n)) plus a small allowance for the discretisation bias
    se = (torch.tensor([0.5, 2.0], dtype=F64) / n).sqrt()
    assert bool(((x.mean(0) - prior.mean()).abs() <= 5 * se + 0.02).all())
    assert bool(((x.var(0) / torch.tensor([0.5, 2.0], dtype=F64) - 1).abs() < 0.1).all())


# -- exact posterior ----------------------------------------------------------------------------------
def test_gaussian_posterior_is_textbook():
    gen = torch.Generator().manual_seed(0)
    d, m = 4, 3
    L = torch.randn(d, d, generator=gen, dtype=F64)
    Sigma = L @ L.T + 0.5 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=gen, dtype=F64)
    A = torch.randn(m, d, generator=gen, dtype=F64)
    sigma_y = torch.tensor([0.3, 0.5, 1.2], dtype=F64)
    y = torch.randn(m, generator=gen, dtype=F64)
    prior = Gaussian(mean.reshape(1, 2, 2), Sigma)
    problem = InverseProblem(Matrix(A, in_shape=(1, 2, 2)), GaussianNoise(sigma_y), y)
    post = prior.posterior(problem)
    R_inv = torch.diag(sigma_y**-2)
    cov = torch.linalg.inv(torch.linalg.inv(Sigma) + A.T @ R_inv @ A)
    mu = cov @ (torch.linalg.solve(Sigma, mean) + A.T @ R_inv @ y)
    assert isinstance(post, Gaussian) and post.means.shape == (1, 1, 2, 2)
    torch.testing.assert_close(post.mean(), mu.reshape(1, 2, 2), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(post.covariance(), cov, atol=1e-10, rtol=1e-10)
    marginal = MultivariateNormal(A @ mean, A @ Sigma @ A.T + torch.diag(sigma_y**2))
    torch.testing.assert_close(prior.log_evidence(problem), marginal.log_prob(y), atol=1e-10, rtol=1e-10)


def test_posterior_obeys_bayes_rule():
    # log p(x | y) = log p(x) + log p(y | x) - log p(y) at any x; the likelihood comes from operators.noise.
    prior = mixture("full", (3,), k=3)
    problem = linear_problem(3, 2, prior, torch.tensor([0.4, 0.8], dtype=F64))
    post, log_z = prior.posterior(problem), prior.log_evidence(problem)
    x = noised_points(prior, 1.0, 10)
    expected = prior.log_prob(x) + problem.log_likelihood(x) - log_z
    torch.testing.assert_close(post.log_prob(x), expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(post.weights.sum(), torch.tensor(1.0, dtype=F64))


def test_log_evidence_by_quadrature_1d():
    prior = GaussianMixture(
        torch.tensor([[-3.0], [0.0], [4.0]], dtype=F64),
        torch.tensor([0.2, 0.5, 0.3], dtype=F64),
        torch.tensor([0.5, 1.0, 2.0], dtype=F64),
    )
    problem = InverseProblem(
        Matrix(torch.tensor([[1.5]], dtype=F64)), GaussianNoise(0.7), torch.tensor([2.0], dtype=F64)
    )
    grid = torch.linspace(-30, 30, 120_001, dtype=F64)[:, None]
    integrand = torch.exp(prior.log_prob(grid) + problem.log_likelihood(grid))
    quad = torch.trapezoid(integrand, grid[:, 0])
    torch.testing.assert_close(prior.log_evidence(problem), torch.log(quad), atol=1e-9, rtol=0)
    # posterior mean by quadrature too
    post_mean = torch.trapezoid(integrand * grid[:, 0], grid[:, 0]) / quad
    torch.testing.assert_close(prior.posterior(problem).mean()[0], post_mean, atol=1e-8, rtol=0)


def test_posterior_agrees_with_importance_sampling():
    prior = mixture("full", (3,), k=3, seed=4)
    problem = linear_problem(3, 2, prior, torch.tensor([0.8, 1.0], dtype=F64), seed=5)
    post = prior.posterior(problem)
    # prior draws with their component labels, generated independently of GaussianMixture.sample
    n = 200_000
    gen = torch.Generator().manual_seed(11)
    labels = torch.multinomial(prior.weights, n, replacement=True, generator=gen)
    chol = torch.linalg.cholesky(prior.covariance_matrices())
    z = torch.randn(n, 3, 1, generator=gen, dtype=F64)
    x = prior.means[labels] + (chol[labels] @ z)[..., 0]
    log_w = problem.log_likelihood(x)
    w = torch.softmax(log_w, 0)
    assert 1.0 / float((w**2).sum()) > 2000  # ESS
    # Self-normalised IS, delta method: SE(f) = sqrt(sum_j w_j^2 (f_j - f_hat)^2).
    onehot = torch.nn.functional.one_hot(labels, 3).to(F64)
    for f, exact in ((onehot, post.weights), (x, post.mean())):
        est = w @ f
        se = ((w[:, None] ** 2) * (f - est) ** 2).sum(0).sqrt()
        assert bool(((est - exact).abs() <= 5 * se + 1e-12).all()), (est, exact, se)


def test_noised_posterior_matches_joint_gaussian_formula():
    # p_sigma(x, y) = sum_i w_i N((x, y); (m_i, A m_i), [[S_i + s^2 I, S_i A^T], [A S_i, A S_i A^T + R]])
    prior = mixture("full", (3,), k=3, seed=6)
    sigma_y = torch.tensor([0.3, 0.6], dtype=F64)
    problem = linear_problem(3, 2, prior, sigma_y, seed=7)
    A, y, R = problem.operator.matrix, problem.y, torch.diag(sigma_y**2)
    S = prior.covariance_matrices()
    marg = MultivariateNormal(prior.means @ A.T, A @ S @ A.T + R)
    log_py = torch.logsumexp(prior.log_weights + marg.log_prob(y), 0)
    for sigma in (0.05, 1.0, 5.0):
        top = torch.cat([S + sigma**2 * torch.eye(3, dtype=F64), S @ A.T], 2)
        bottom = torch.cat([A @ S, A @ S @ A.T + R], 2)
        joint = MultivariateNormal(
            torch.cat([prior.means, prior.means @ A.T], 1), torch.cat([top, bottom], 1)
        )

        def log_cond(x, joint=joint):
            xy = torch.cat([x, y.expand(x.shape[0], 2)], 1)
            return torch.logsumexp(prior.log_weights + joint.log_prob(xy[:, None, :]), 1) - log_py

        noised = prior.noised_posterior(problem, sigma)
        x = noised_points(prior, sigma, 6).requires_grad_(True)
        expected = log_cond(x)
        (grad,) = torch.autograd.grad(expected.sum(), x)
        x = x.detach()
        torch.testing.assert_close(noised.log_prob(x), expected.detach(), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(noised.score(x, 0.0), grad, atol=1e-9, rtol=1e-8)
        # the same exact posterior evaluated at the diffusion level directly
        torch.testing.assert_close(prior.posterior(problem).score(x, sigma), grad, atol=1e-9, rtol=1e-8)


# -- benchmark constructors ---------------------------------------------------------------------------
def test_grid_recipe():
    gm = GaussianMixture.grid(2)
    assert gm.num_components == 25 and gm.covariance_type == "scalar"
    expected = {(8.0 * i, 8.0 * j) for i in range(-2, 3) for j in range(-2, 3)}
    assert {tuple(m.tolist()) for m in gm.means} == expected
    torch.testing.assert_close(gm.weights.sum(), torch.tensor(1.0, dtype=F64))
    img = GaussianMixture.grid(64, event_shape=(1, 8, 8), seed=0)
    assert img.means.shape == (25, 1, 8, 8) and img.event_shape == (1, 8, 8)
    flat = img.means.reshape(25, -1)
    torch.testing.assert_close(flat[:, 2:], flat[:, :-2])  # the (8i, 8j) pair tiled
    odd = GaussianMixture.grid(5)
    torch.testing.assert_close(odd.means[:, 4], odd.means[:, 0])
    torch.testing.assert_close(img.weights, gm.weights)  # same seed, same weights
    assert not torch.equal(GaussianMixture.grid(2, seed=1).weights, gm.weights)
    with pytest.raises(ValueError, match="num_components"):
        GaussianMixture.grid(4, num_components=10)
    with pytest.raises(ValueError, match="event_shape"):
        GaussianMixture.grid(10, event_shape=(1, 3, 3))


def test_random_recipe():
    for kind in ("scalar", "diagonal", "full"):
        gm = GaussianMixture.random(6, 4, seed=3, covariance=kind, event_shape=(1, 2, 3))
        assert gm.covariance_type == kind and gm.means.shape == (4, 1, 2, 3)
        again = GaussianMixture.random(6, 4, seed=3, covariance=kind, event_shape=(1, 2, 3))
        torch.testing.assert_close(gm.covariances, again.covariances, atol=0, rtol=0)
        torch.testing.assert_close(gm.means, again.means, atol=0, rtol=0)


# -- validation ---------------------------------------------------------------------------------------
def test_clear_errors():
    means = torch.zeros(2, 3, dtype=F64)
    w = torch.tensor([0.5, 0.5], dtype=F64)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, torch.tensor([0.5, -0.5], dtype=F64), 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(means, torch.ones(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64), 1.0)
    not_pd = torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)).expand(2, 3, 3)
    with pytest.raises(ValueError, match="covariances.*positive definite"):
        GaussianMixture(means, w, not_pd)
    asym = torch.eye(3, dtype=F64).repeat(2, 1, 1)
    asym[0, 0, 1] = 0.5
    with pytest.raises(ValueError, match="covariances.*symmetric"):
        GaussianMixture(means, w, asym)
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(means, w, torch.ones(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(means, w, torch.tensor([1.0, 0.0], dtype=F64))
    prior = GaussianMixture(means, w, torch.tensor([1.0, 2.0], dtype=F64))
    with pytest.raises(ValueError, match="x has shape"):
        prior.denoise(torch.zeros(4, 2, dtype=F64), 1.0)
    with pytest.raises(TypeError, match="dtype"):
        prior.denoise(torch.zeros(4, 3), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        prior.denoise(torch.zeros(4, 3, dtype=F64), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        prior.log_prob(torch.zeros(4, 3, dtype=F64), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        prior.score(torch.zeros(4, 3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="steps"):
        prior.sample(4, method="heun")
    A = Matrix(torch.ones(2, 3, dtype=F64))
    y = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match="linear-Gaussian"):
        prior.posterior(InverseProblem(A, LaplaceNoise(1.0), y))
    with pytest.raises(ValueError, match="linear-Gaussian"):
        prior.posterior(InverseProblem(Function(lambda x: x[:, :2] ** 2, (3,)), GaussianNoise(1.0), y))
    with pytest.raises(ValueError, match="batch"):
        prior.posterior(InverseProblem(A, GaussianNoise(1.0), torch.zeros(5, 2, dtype=F64)))
    with pytest.raises(ValueError, match="in_shape"):
        prior.posterior(InverseProblem(Matrix(torch.ones(2, 4, dtype=F64)), GaussianNoise(1.0), y))


# -- dtypes, devices, scale ---------------------------------------------------------------------------
def test_float32_and_to():
    prior = mixture("full", (1, 4, 4))
    p32 = prior.to(dtype=torch.float32)
    assert p32.dtype == torch.float32 and prior.dtype == F64
    x = noised_points(prior, 0.5, 5)
    out = p32.denoise(x.float(), 0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), prior.denoise(x, 0.5), atol=1e-4, rtol=1e-4)
    assert p32.sample(7, seed=0).dtype == torch.float32
    problem = linear_problem(16, 5, prior, 0.5)
    op32 = Matrix(problem.operator.matrix.float(), in_shape=(1, 4, 4))
    post32 = p32.posterior(InverseProblem(op32, GaussianNoise(0.5), problem.y.float()))
    assert post32.dtype == torch.float32
    torch.testing.assert_close(post32.mean().double(), prior.posterior(problem).mean(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        post32.weights.double(), prior.posterior(problem).weights, atol=1e-4, rtol=1e-4
    )


def test_dimension_1000_diagonal_with_dense_operator():
    prior = GaussianMixture.random(1000, 10, covariance="diagonal", seed=0)
    problem = linear_problem(1000, 50, prior, 0.1)
    post = prior.posterior(problem)
    assert post.means.shape == (10, 1000) and bool(torch.isfinite(post.weights).all())
    x = post.sample(64, seed=0)
    assert x.shape == (64, 1000) and bool(torch.isfinite(x).all())
    # Bayes' rule in dimension 1000
    expected = prior.log_prob(x) + problem.log_likelihood(x) - prior.log_evidence(problem)
    torch.testing.assert_close(post.log_prob(x), expected, atol=1e-6, rtol=1e-9)
    den = post.noised(1.0).denoise(x + torch.randn_like(x), 0.5)
    assert den.shape == x.shape and bool(torch.isfinite(den).all())
