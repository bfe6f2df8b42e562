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


# -- matrix-form evaluation (scalar, diagonal, shared-basis covariances) against the dense eigen path --
# Tolerances follow the rounding of the expanded square. With z = x - ref (ref the mixture mean), every
# term of (x - m_i)^T C_i^{-1} (x - m_i) is bounded by (|z| + max_i |m_i - ref|)^2 / e_min (e_min the
# smallest eigenvalue of any C_i) and a dot product of length d carries a relative error of at most
# d eps, so each component's l_i = log w_i + log N(x; m_i, C_i) agrees within
# t_i = (d + 4) eps ((|z| + max_j |m_j - ref|)^2 / e_min + |l_i|) (both sides and the final rounding);
# log p = logsumexp_i l_i within t_p = sum_i r_i t_i; responsibilities r_i within r_i (t_i + t_p); a
# field v = sum_i r_i v_i within sum_i r_i |v_i - v| (t_i + t_p) (its derivative in l_i is
# r_i (v_i - v)) plus the rounding of the combination, (d + 4) eps ((|z| + max_j |m_j - ref|) / e_min +
# max_i |v_i|).
SIGMA_CASES = ("zero", "scalar", "per-row", "equal-per-row")


def sigma_case(case: str, n: int, dtype=F64):
    if case == "zero":
        return 0.0
    if case == "scalar":
        return 0.7
    if case == "equal-per-row":  # a tensor whose values are all equal takes the one-level path
        return torch.full((n,), 0.7, dtype=dtype)
    return torch.logspace(-2, 1, n, dtype=dtype)


def dense_reference(prior: GaussianMixture) -> GaussianMixture:
    """The same mixture with explicit (K, d, d) covariances, evaluated by the per-component eigen path."""
    ref = GaussianMixture(prior.means.to(F64), prior.weights.to(F64), prior.covariance_matrices().to(F64))
    assert ref.covariance_type == "full" and ref.shared_basis is None
    return ref


def dense_components(ref: GaussianMixture, x: torch.Tensor, sigma):
    """Per component of the dense reference: ``l_i`` (n, K), denoisers and scores (n, K, d)."""
    n = x.shape[0]
    s = torch.as_tensor(sigma, dtype=F64).expand(n)
    xf = x.reshape(n, -1).to(F64)
    logits, dens, scores = [], [], []
    for i in range(ref.num_components):
        one = Gaussian(ref.means[i].reshape(-1), ref.covariance_matrices()[i])
        logits.append(ref.log_weights[i] + one.log_prob(xf, s))
        dens.append(one.denoise(xf, s) if bool((s > 0).all()) else xf)
        scores.append(one.score(xf, s))
    return torch.stack(logits, 1), {"denoise": torch.stack(dens, 1), "score": torch.stack(scores, 1)}


def rounding_tolerances(prior: GaussianMixture, x: torch.Tensor, sigma, logits: torch.Tensor, eps: float):
    """Tolerances ``(t_p (n,), t_r (n, K), field)`` (see the comment above); ``field(fields)`` takes the
    per-component fields (n, K, d) of the reference."""
    n, d = x.shape[0], prior.dim
    s2 = torch.as_tensor(sigma, dtype=F64).expand(n) ** 2
    e_min = prior.covariance_eigenvalues.to(F64).min() + s2
    mu = prior.mean().reshape(-1).to(F64)
    spread = (prior.means.reshape(prior.num_components, -1).to(F64) - mu).norm(dim=1).max()
    reach = (x.reshape(n, -1).to(F64) - mu).norm(dim=1) + spread
    t_i = (d + 4) * eps * ((reach**2 / e_min)[:, None] + logits.abs())
    r = torch.softmax(logits, 1)
    t_p = (r * t_i).sum(1)
    t_r = r * (t_i + t_p[:, None])

    def t_field(fields):
        v = (r[:, :, None] * fields).sum(1, keepdim=True)
        moved = (fields - v).abs().amax(2)
        return (t_r * moved).sum(1) + (d + 4) * eps * (reach / e_min + fields.abs().amax((1, 2)))

    return t_p, t_r, t_field


def assert_within(actual, expected, tol, what):
    n = actual.shape[0]
    err = (actual.to(F64) - expected.to(F64)).reshape(n, -1).abs()
    tol = tol.reshape(n, -1)
    assert bool((err <= tol).all()), f"{what}: max error / tolerance {float((err / tol).max()):.3g}"


def check_against_dense(prior, x, sigma, eps):
    ref = dense_reference(prior)
    x64 = x.to(F64)
    s64 = sigma if isinstance(sigma, float) else sigma.to(F64)
    logits, fields = dense_components(ref, x64, s64)
    t_p, t_r, t_field = rounding_tolerances(prior, x, s64, logits, eps)
    assert_within(prior.log_prob(x, sigma), ref.log_prob(x64, s64), t_p, "log_prob")
    assert_within(prior.responsibilities(x, sigma), ref.responsibilities(x64, s64), t_r, "responsibilities")
    modes = ("score",) if isinstance(sigma, float) and sigma == 0.0 else ("score", "denoise")
    for mode in modes:
        out = getattr(prior, mode)(x, sigma)
        assert out.dtype == prior.dtype and out.shape == x.shape
        assert_within(out, getattr(ref, mode)(x64, s64), t_field(fields[mode]), mode)


def with_midpoints(prior: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """``x`` and points between pairs of means (responsibilities far from 0 and 1)."""
    m = prior.means.to(x.dtype)
    return torch.cat([x, 0.5 * (m + m.roll(1, 0)), 0.6 * m + 0.4 * m.roll(2, 0)])


@pytest.mark.parametrize("kind", ["scalar", "diagonal"])
@pytest.mark.parametrize("case", SIGMA_CASES)
def test_matrix_form_matches_dense_float64(kind, case):
    prior = mixture(kind, (1, 2, 3), k=4)
    x = with_midpoints(prior, noised_points(prior, 1.0, 9))
    n = x.shape[0]
    check_against_dense(prior, x, sigma_case(case, n), torch.finfo(F64).eps)
    # far from every mode (the responsibilities saturate, the expanded square is large)
    check_against_dense(prior, 30.0 + x, sigma_case(case, n), torch.finfo(F64).eps)


def offset_mixture(kind: str, offset: float, d: int = 16, k: int = 4) -> GaussianMixture:
    """Unit-scale modes about ``offset`` from the origin (every coordinate), exact in float32."""
    gen = torch.Generator().manual_seed(3)
    means = (offset + 1.5 * torch.randn(k, d, generator=gen, dtype=F64)).float()
    weights = (0.5 + torch.rand(k, generator=gen, dtype=F64)).float()
    cov = torch.ones(k).float() if kind == "scalar" else (0.5 + torch.rand(k, d, generator=gen)).float()
    return GaussianMixture(means, weights, cov)


def offset_points(p32: GaussianMixture) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    x = p32.sample(12, seed=gen) + 0.5 * torch.randn(12, p32.dim, generator=gen)
    return with_midpoints(p32, x)


@pytest.mark.parametrize("kind", ["scalar", "diagonal"])
@pytest.mark.parametrize("case", SIGMA_CASES)
@pytest.mark.parametrize("offset", [20.0, 200.0])
def test_matrix_form_float32_far_from_the_origin(kind, case, offset):
    p32 = offset_mixture(kind, offset)
    x = offset_points(p32)
    check_against_dense(p32, x, sigma_case(case, x.shape[0], torch.float32), torch.finfo(torch.float32).eps)


def test_expanded_square_without_centring_or_mean_term_is_rejected():
    # The tolerances above reject (a) the expanded square without the |m_i|^2 term and (b) in float32,
    # the expanded square about the origin instead of the mixture mean (cancellation of |x|^2 = 200^2 d),
    # which a direct float32 evaluation and the prior's own meet.
    p32 = offset_mixture("scalar", 200.0)
    x = offset_points(p32)
    ref = dense_reference(p32)
    d, sigma = p32.dim, 0.7
    e = p32.covariances + sigma**2  # (K,), float32
    logp = ref.log_prob(x.double(), sigma)
    logits, _ = dense_components(ref, x.double(), sigma)
    t_p, _, _ = rounding_tolerances(p32, x, sigma, logits, torch.finfo(torch.float32).eps)
    m = p32.means

    def log_prob_from(dist):
        comp = p32.log_weights - 0.5 * (dist / e + d * torch.log(e) + d * math.log(2 * math.pi))
        return torch.logsumexp(comp, 1)

    assert_within(log_prob_from((x[:, None, :] - m).pow(2).sum(-1)), logp, t_p, "direct float32")
    assert_within(p32.log_prob(x, sigma), logp, t_p, "log_prob")
    uncentred = (x * x).sum(1, keepdim=True) - 2 * x @ m.T + (m * m).sum(1)
    with pytest.raises(AssertionError, match="uncentred"):
        assert_within(log_prob_from(uncentred), logp, t_p, "uncentred")
    x64, m64 = x.double(), m.double()
    no_mean_term = (x64 * x64).sum(1, keepdim=True) - 2 * x64 @ m64.T
    comp = p32.log_weights.double() - 0.5 * (no_mean_term / e.double() + d * torch.log(e.double()))
    err = (torch.logsumexp(comp - 0.5 * d * math.log(2 * math.pi), 1) - logp).abs()
    assert bool((err > 1e3 * t_p).all())


def test_diagonal_per_row_sigma_in_blocks(monkeypatch):
    # per-row levels with diagonal covariances go through (rows, K, d) blocks: check the block seams
    prior = mixture("diagonal", (5,), k=3)
    sigma = torch.logspace(-2, 1, 11, dtype=F64)
    x = noised_points(prior, sigma, 11)
    whole = prior.denoise(x, sigma), prior.log_prob(x, sigma), prior.score(x, sigma)
    monkeypatch.setattr(GaussianMixture, "_block_elements", 2 * 3 * 5)  # blocks of 2 rows
    blocks = prior.denoise(x, sigma), prior.log_prob(x, sigma), prior.score(x, sigma)
    for a, b in zip(whole, blocks, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    check_against_dense(prior, x, sigma, torch.finfo(F64).eps)


@pytest.mark.parametrize("kind", ["scalar", "diagonal"])
def test_denoise_vjp_matches_dense(kind):
    # the samplers differentiate the denoiser: vector-Jacobian products agree with the dense path
    prior = mixture(kind, (4,), k=3)
    ref = dense_reference(prior)
    for sigma in (0.3, torch.linspace(0.2, 2.0, 6, dtype=F64)):
        x = noised_points(prior, sigma, 6)
        v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
        grads = []
        for p in (prior, ref):
            xr = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad((p.denoise(xr, sigma) * v).sum(), xr)
            grads.append(g)
        torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-10)


# -- exact posterior with a shared eigenbasis -----------------------------------------------------------
def reference_posterior(prior: GaussianMixture, A: torch.Tensor, y: torch.Tensor, r: torch.Tensor):
    """The exact posterior the textbook way, with torch.linalg on the dense (K, d, d) covariances:
    ``S_i = R + A Sigma_i A^T``, ``K_i = Sigma_i A^T S_i^{-1}``, returned as a dense-full mixture, and
    the log evidence ``log sum_i w_i N(y; A m_i, S_i)``."""
    Sig = prior.covariance_matrices()
    m = prior.means.reshape(prior.num_components, -1)
    S = A @ Sig @ A.T + torch.diag(r)
    gain = Sig @ A.T @ torch.linalg.inv(S)
    cov = Sig - gain @ A @ Sig
    means = m + (gain @ (y - m @ A.T)[..., None])[..., 0]
    log_lik = MultivariateNormal(m @ A.T, S).log_prob(y)
    log_z = torch.logsumexp(prior.log_weights + log_lik, 0)
    post = GaussianMixture(
        means.reshape(prior.means.shape), torch.exp(prior.log_weights + log_lik - log_z), 0.5 * (cov + cov.mT)
    )
    return post, log_z


def shared_problem(prior: GaussianMixture, m: int, sigma_y=0.4, rank: int | None = None, seed: int = 8):
    gen = torch.Generator().manual_seed(seed)
    d = prior.dim
    A = torch.randn(m, d, generator=gen, dtype=F64) / math.sqrt(d)
    if rank is not None:  # rank-deficient: repeated rows
        A = A[torch.arange(m) % rank]
    op = Matrix(A, in_shape=prior.event_shape)
    noise = GaussianNoise(sigma_y)
    y = noise.sample(op(prior.sample(1, seed=gen)), gen)[0]
    return InverseProblem(op, noise, y), A


@pytest.mark.parametrize(("m", "rank"), [(1, None), (3, None), (6, None), (9, None), (5, 2)])
def test_shared_basis_posterior_matches_textbook(m, rank):
    prior = GaussianMixture(
        mixture("scalar", (1, 2, 3), k=4).means,
        torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64),
        torch.tensor([0.5, 1.0, 2.0, 0.8], dtype=F64),
    )
    problem, A = shared_problem(prior, m, rank=rank)
    post = prior.posterior(problem)
    assert post.covariance_type == "full" and post.shared_basis is not None
    assert post.shared_basis.shape == (6, 6) and post.covariance_eigenvalues.shape == (4, 6)
    ref, ref_log_z = reference_posterior(prior, A, problem.y.reshape(-1), torch.full((m,), 0.16, dtype=F64))
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(prior.log_evidence(problem), ref_log_z, **tol)
    torch.testing.assert_close(post.means, ref.means, **tol)
    torch.testing.assert_close(post.weights, ref.weights, **tol)
    torch.testing.assert_close(post.covariance_matrices(), ref.covariance_matrices(), **tol)
    torch.testing.assert_close(post.covariances, ref.covariances, **tol)
    torch.testing.assert_close(post.mean(), ref.mean(), **tol)
    torch.testing.assert_close(post.covariance(), ref.covariance(), **tol)
    for got, want in zip(post.location_scale(), ref.location_scale(), strict=True):
        torch.testing.assert_close(got, want, **tol)
    assert abs(post.smallest_std() - ref.smallest_std()) <= 1e-12
    x = noised_points(ref, 1.0, 8)
    for sigma in (0.0, 0.5, torch.logspace(-2, 1, 8, dtype=F64)):
        check_against_dense(post, x, sigma, torch.finfo(F64).eps)
        torch.testing.assert_close(post.noised(0.3).log_prob(x, 0.0), ref.log_prob(x, 0.3), **tol)
    # Bayes' rule at any x
    expected = prior.log_prob(x) + problem.log_likelihood(x) - prior.log_evidence(problem)
    torch.testing.assert_close(post.log_prob(x), expected, atol=1e-10, rtol=1e-12)


def test_shared_basis_posterior_samples_and_wrong_eigenvalues_are_rejected():
    prior = GaussianMixture(
        torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]], dtype=F64),
        torch.tensor([0.4, 0.6], dtype=F64),
        torch.tensor([1.0, 2.0], dtype=F64),
    )
    A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]], dtype=F64)
    problem = InverseProblem(Matrix(A), GaussianNoise(0.3), torch.tensor([0.5, 1.5], dtype=F64))
    post = prior.posterior(problem)
    ref, _ = reference_posterior(prior, A, problem.y, torch.full((2,), 0.09, dtype=F64))
    # exact draws: mean and covariance entries within 5 Monte-Carlo standard errors (as above)
    n = 40_000
    x = post.sample(n, seed=0)
    mu, cov = ref.mean(), ref.covariance()
    assert bool(((x.mean(0) - mu).abs() <= 5 * (torch.diagonal(cov) / n).sqrt()).all())
    prod = (x - mu)[:, :, None] * (x - mu)[:, None, :]
    assert bool(((prod.mean(0) - cov).abs() <= 5 * prod.std(0) / math.sqrt(n)).all())
    r = ref.responsibilities(x)
    assert bool(((r.mean(0) - ref.weights).abs() <= 5 * r.std(0) / math.sqrt(n)).all())
    # Eigenvalues on the wrong side (the row space of A swapped with its complement) fail both checks.
    q, lam = post.shared_basis, post.covariance_eigenvalues
    wrong = GaussianMixture._from_parts(
        post._means, post.log_weights, "shared", lam.flip(1), (3,), 1e-3, 10.0, basis=q
    )
    assert float((wrong.covariance_matrices() - ref.covariance_matrices()).abs().max()) > 0.1
    xw = wrong.sample(n, seed=0)
    prod = (xw - mu)[:, :, None] * (xw - mu)[:, None, :]
    assert not bool(((prod.mean(0) - cov).abs() <= 5 * prod.std(0) / math.sqrt(n)).all())
    xs = noised_points(ref, 1.0, 8)
    expected = ref.log_prob(xs, 0.5)
    t_p, _, _ = rounding_tolerances(post, xs, 0.5, dense_components(ref, xs, 0.5)[0], torch.finfo(F64).eps)
    assert_within(post.log_prob(xs, 0.5), expected, t_p, "log_prob")
    with pytest.raises(AssertionError, match="log_prob"):
        assert_within(wrong.log_prob(xs, 0.5), expected, t_p, "log_prob")


def test_shared_basis_posterior_needs_no_dense_factorisation(monkeypatch):
    prior = GaussianMixture.grid(40, num_components=9)
    problem, _ = shared_problem(prior, 7)

    def refuse(*args, **kwargs):
        raise AssertionError("a dense factorisation was called")

    for name in ("eigh", "cholesky", "cholesky_ex", "inv", "solve_triangular"):
        monkeypatch.setattr(torch.linalg, name, refuse)
    post = prior.posterior(problem)
    x = post.sample(5, seed=0)
    for p in (post, post.noised(0.5), post.to(dtype=torch.float32)):
        xp = x.to(p.dtype)
        p.log_prob(xp), p.responsibilities(xp, 0.3), p.denoise(xp, 0.3), p.score(xp, 0.0), p.sample(3, seed=1)
        assert p.shared_basis is not None and p.covariance_type == "full"
    assert "covariance_type='full'" in repr(post)


def test_shared_basis_float32_and_fallbacks():
    prior = mixture("scalar", (5,), k=3)
    problem, A = shared_problem(prior, 3)
    post = prior.posterior(problem)
    p32 = prior.to(dtype=torch.float32)
    op32 = Matrix(A.float())
    post32 = p32.posterior(InverseProblem(op32, GaussianNoise(0.4), problem.y.float()))
    assert post32.dtype == torch.float32 and post32.shared_basis.dtype == torch.float32
    x = noised_points(post, 0.5, 6)
    # float32 parameters: A, y and the prior rounded to float32, then evaluated; relative 1e-5 covers it
    torch.testing.assert_close(
        post32.denoise(x.float(), 0.5).double(), post.denoise(x, 0.5), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(post32.log_prob(x.float()).double(), post.log_prob(x), atol=1e-4, rtol=1e-5)
    back = post32.to(dtype=F64)
    assert back.shared_basis.dtype == F64
    # several noise levels or a diagonal prior: the dense path, same answer
    sigma_y = torch.tensor([0.3, 0.4, 0.5], dtype=F64)
    het = prior.posterior(InverseProblem(Matrix(A), GaussianNoise(sigma_y), problem.y))
    assert het.shared_basis is None and het.covariance_type == "full"
    ref_het, _ = reference_posterior(prior, A, problem.y, sigma_y**2)
    torch.testing.assert_close(
        het.covariance_matrices(), ref_het.covariance_matrices(), atol=1e-12, rtol=1e-12
    )
    # conditioning a shared-basis posterior again goes through its dense matrices
    again = post.posterior(problem)
    ref, _ = reference_posterior(prior, A, problem.y, torch.full((3,), 0.16, dtype=F64))
    ref2, _ = reference_posterior(ref, A, problem.y, torch.full((3,), 0.16, dtype=F64))
    torch.testing.assert_close(again.means, ref2.means, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        again.covariance_matrices(), ref2.covariance_matrices(), atol=1e-12, rtol=1e-12
    )


def test_shared_basis_low_rank_split_and_isotropic_limit():
    # a posterior under m <= d / 2 measurements is evaluated in the m observed directions plus an
    # isotropic complement; a shared basis with no varying direction at all is a scalar mixture
    prior = mixture("scalar", (8,), k=3)
    problem, A = shared_problem(prior, 2)
    post = prior.posterior(problem)
    assert post._frame()[2] is not None and post._frame()[2][0].shape == (8, 2)
    ref, _ = reference_posterior(prior, A, problem.y, torch.full((2,), 0.16, dtype=F64))
    x = with_midpoints(ref, noised_points(ref, 1.0, 6))
    for sigma in (0.0, 0.5, torch.logspace(-2, 1, x.shape[0], dtype=F64)):
        check_against_dense(post, x, sigma, torch.finfo(F64).eps)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(9), dtype=F64))
    c = prior.covariances
    iso = GaussianMixture._from_parts(
        prior._means, prior.log_weights, "shared", c[:, None].expand(3, 8).clone(), (8,), 1e-3, 10.0, basis=q
    )
    assert iso._frame()[2][0].shape == (8, 0)
    tol = dict(atol=1e-12, rtol=1e-12)
    for sigma in (0.0, 0.5, torch.logspace(-2, 1, x.shape[0], dtype=F64)):
        torch.testing.assert_close(iso.log_prob(x, sigma), prior.log_prob(x, sigma), **tol)
        torch.testing.assert_close(iso.score(x, sigma), prior.score(x, sigma), **tol)
    torch.testing.assert_close(iso.denoise(x, 0.5), prior.denoise(x, 0.5), **tol)
