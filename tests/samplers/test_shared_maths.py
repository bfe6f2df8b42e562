"""The maths the samplers share, each against a closed form: resampling and categorical draws, the
ancestral bridge, Heun's order, Tweedie under the posterior, PiGDM's variance, the SVD algebra of
linear-Gaussian problems and the Langevin preconditioner. Property-based where the property is exact."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import operators as ops
import posterior as post
from posterior.priors import Gaussian
from posterior.priors.integrators import (
    ancestral_moments,
    ancestral_step,
    flow_velocity,
    heun_step,
    x0_variance,
)
from posterior.samplers.guidance import pigdm_variance, posterior_tweedie, tempering
from posterior.samplers.langevin import Preconditioner
from posterior.samplers.linear_gaussian import LinearGaussianSVD, isotropic_log_density
from posterior.samplers.resampling import (
    RESAMPLING,
    draw_categorical,
    ess,
    inverse_cdf,
    log_mean_exp,
    resample_indices,
)
from posterior.utils import per_row

SETTINGS = settings(max_examples=40, deadline=None)
log_weights = st.integers(1, 3).flatmap(
    lambda b: st.integers(1, 12).flatmap(
        lambda n: st.lists(st.floats(-30, 30), min_size=b * n, max_size=b * n).map(
            lambda v: torch.tensor(v, dtype=torch.float64).reshape(b, n)
        )
    )
)


@SETTINGS
@given(log_weights, st.sampled_from(RESAMPLING), st.integers(0, 2**31))
def test_resampling_keeps_the_expected_counts(log_w, scheme, seed):
    """Every scheme returns valid ancestors; systematic keeps each particle floor or ceil of ``N W_i``
    times, residual at least ``floor(N W_i)`` times (the properties that make them low-variance)."""
    B, N = log_w.shape
    idx = resample_indices(log_w, scheme, torch.Generator().manual_seed(seed))
    assert idx.shape == (B, N) and bool(((idx >= 0) & (idx < N)).all())
    counts = torch.zeros(B, N, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(B, N, dtype=torch.float64)
    )
    expected = N * torch.softmax(log_w, -1)
    if scheme == "systematic":
        assert bool(
            (counts >= torch.floor(expected - 1e-9)).all() & (counts <= torch.ceil(expected + 1e-9)).all()
        )
    if scheme == "residual":  # floor(N W_i) copies first, computed as the scheme does
        assert bool((counts >= torch.floor(expected)).all())


@SETTINGS
@given(log_weights, st.floats(0, 1, exclude_max=True))
def test_inverse_cdf_picks_the_interval_of_u(log_w, u):
    probs = torch.softmax(log_w, -1)
    i = inverse_cdf(probs, torch.full((log_w.shape[0], 1), u, dtype=torch.float64))[:, 0]
    cdf = torch.cumsum(probs, -1)
    below = torch.where(
        i > 0, cdf.gather(1, (i - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(u + cdf[:, 0])
    )
    assert bool((below <= u + 1e-12).all())
    assert bool(((cdf.gather(1, i[:, None])[:, 0] > u - 1e-12) | (i == log_w.shape[1] - 1)).all())


@SETTINGS
@given(log_weights, st.floats(-50, 50))
def test_ess_and_log_mean_exp(log_w, shift):
    B, N = log_w.shape
    assert torch.allclose(ess(log_w + shift), ess(log_w)) and bool(
        ((ess(log_w) >= 1 - 1e-9) & (ess(log_w) <= N + 1e-9)).all()
    )
    assert torch.allclose(
        ess(torch.zeros(B, N, dtype=torch.float64)), torch.full((B,), float(N), dtype=torch.float64)
    )
    assert torch.allclose(log_mean_exp(log_w), torch.log(torch.exp(log_w).mean(-1)))


def test_categorical_draws_have_the_softmax_frequencies():
    """20000 draws from 4 categories: each frequency within 4 binomial standard errors of softmax."""
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0]], dtype=torch.float64).expand(20000, 4)
    draws = draw_categorical(logits, torch.Generator().manual_seed(0))
    p = torch.softmax(logits[0], -1)
    freq = torch.bincount(draws, minlength=4).double() / 20000
    assert bool(((freq - p).abs() <= 4 * (p * (1 - p) / 20000).sqrt()).all()), (freq, p)
    argmax = logits.argmax(-1)  # the broken variant (an argmax instead of a draw) is rejected
    assert not bool(
        (
            (torch.bincount(argmax, minlength=4).double() / 20000 - p).abs()
            <= 4 * (p * (1 - p) / 20000).sqrt()
        ).all()
    )


@SETTINGS
@given(st.floats(0.01, 100), st.floats(0.0, 1.0, exclude_max=True), st.floats(-5, 5), st.floats(-5, 5))
def test_the_ancestral_bridge_is_the_gaussian_conditional(sigma, fraction, x0, x):
    """Given x0, ``(x_sigma', x_sigma)`` is Gaussian with covariance ``[[s'^2, s'^2], [s'^2, s^2]]`` (VE
    noising); conditioning on ``x_sigma = x`` gives mean ``x0 + s'^2/s^2 (x - x0)`` and variance
    ``s'^2 - s'^4 / s^2``, which :func:`ancestral_moments` must return."""
    s, sn = torch.tensor(sigma, dtype=torch.float64), torch.tensor(fraction * sigma, dtype=torch.float64)
    mean, var = ancestral_moments(
        torch.tensor([x], dtype=torch.float64), torch.tensor([x0], dtype=torch.float64), s, sn
    )
    gain = sn**2 / s**2  # cov(x_sigma', x_sigma) / var(x_sigma)
    assert torch.allclose(mean, x0 + gain * (x - torch.tensor([x0], dtype=torch.float64)))
    assert torch.allclose(var, sn**2 - gain * sn**2)


def test_ancestral_step_draws_from_the_bridge():
    """40000 draws: their mean and variance within 4 Monte-Carlo standard errors of the bridge's; a step
    without its noise (a broken variant) is rejected by the same check."""
    n, sigma, sigma_next = (
        40000,
        torch.tensor(2.0, dtype=torch.float64),
        torch.tensor(0.5, dtype=torch.float64),
    )
    x, x0 = torch.full((n, 1), 1.5, dtype=torch.float64), torch.full((n, 1), -0.5, dtype=torch.float64)
    mean, var = ancestral_moments(x[:1], x0[:1], sigma, sigma_next)

    def agrees(draws):
        m, v = draws.mean(), draws.var()
        return (
            abs(float(m - mean)) < 4 * float(var / n) ** 0.5
            and abs(float(v - var)) < 4 * float(var) * (2 / n) ** 0.5
        )

    assert agrees(ancestral_step(x, x0, sigma, sigma_next, torch.Generator().manual_seed(0)))
    assert not agrees(ancestral_moments(x, x0, sigma, sigma_next)[0])


def test_heun_is_second_order_on_a_gaussian_flow():
    """The probability-flow ODE of N(0, s^2) has the solution x(sigma) = x(sigma_0) sqrt((s^2 + sigma^2) /
    (s^2 + sigma_0^2)); halving Heun's step divides its error by about 4 (Euler's by 2)."""
    prior = Gaussian(torch.zeros(1, dtype=torch.float64), 0.49)  # variance s^2 = 0.49
    x = torch.tensor([[2.0]], dtype=torch.float64)
    exact = x * math.sqrt((0.49 + 0.1**2) / (0.49 + 3.0**2))

    def error(steps):
        levels = torch.linspace(3.0, 0.1, steps + 1, dtype=torch.float64)
        z = x
        for k in range(steps):
            z = heun_step(flow_velocity(prior.denoise), z, levels[k], levels[k + 1])
        return float((z - exact).abs())

    assert 3.5 < error(8) / error(16) < 4.5


@SETTINGS
@given(st.floats(0.05, 20), st.floats(0.1, 3), st.floats(0.05, 2), st.floats(-3, 3), st.floats(-3, 3))
def test_posterior_tweedie_is_the_exact_posterior_mean_for_a_gaussian(sigma, data_std, noise, x, y):
    """Prior N(0, s^2), y = x0 + n: with the exact ``grad log p_sigma(y | x)`` (``y | x_sigma`` is
    ``N(D(x), sigma_y^2 + r^2)``, ``r^2`` = :func:`pigdm_variance`), Tweedie's formula gives
    ``E[x0 | x_sigma, y]`` of Gaussian conditioning."""
    s2, n2, v2 = data_std**2, noise**2, sigma**2
    shrink = s2 / (s2 + v2)  # dD/dx
    x0_hat = torch.tensor([[shrink * x]], dtype=torch.float64)
    r2 = float(pigdm_variance(torch.tensor(sigma, dtype=torch.float64), data_std))
    assert math.isclose(r2, v2 * shrink, rel_tol=1e-12)  # the variance of x0 | x_sigma
    grad = (y - x0_hat) / (n2 + r2) * shrink
    precision = 1 / s2 + 1 / v2 + 1 / n2  # x0 | x_sigma, y
    exact = (x / v2 + y / n2) / precision
    assert math.isclose(
        float(posterior_tweedie(x0_hat, grad, torch.tensor(sigma, dtype=torch.float64))),
        exact,
        rel_tol=1e-9,
        abs_tol=1e-12,
    )


def test_tempering_and_per_row():
    assert float(tempering(torch.tensor(0.0), 0.3)) == 1.0 and float(tempering(torch.tensor(0.3), 0.3)) == 0.5
    assert per_row(torch.tensor(2.0), 4).shape == () and per_row(torch.arange(3.0), 4).shape == (3, 1, 1, 1)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 6), st.floats(0.1, 2), st.integers(0, 2**31))
def test_the_svd_basis_gives_the_likelihood(rows, d, sigma_y, seed):
    """``log p(y | x) = sum_j log N(u_j; (V^T x)_j, tau_j^2) + log_const`` for any linear-Gaussian problem,
    and :func:`isotropic_log_density` is the Gaussian density."""
    g = torch.Generator().manual_seed(seed)
    A = ops.Matrix(torch.randn(rows, d, generator=g, dtype=torch.float64))
    problem = post.InverseProblem(
        A, ops.GaussianNoise(sigma_y), torch.randn(rows, generator=g, dtype=torch.float64)
    )
    assert LinearGaussianSVD.applies(problem)
    lg = LinearGaussianSVD.of(problem, "test")
    x = torch.randn(5, d, generator=g, dtype=torch.float64)
    assert torch.allclose(lg.log_potential(lg.coords(x), lg.tau2) + lg.log_const, problem.log_likelihood(x))
    assert torch.allclose(lg.with_coords(x, lg.coords(x)), x)
    normal = torch.distributions.Normal(0.5, 1.5).log_prob(x).sum(1)
    assert torch.allclose(isotropic_log_density(x, 0.5, 1.5**2), normal)


def test_svd_basis_applies_only_to_one_noise_level():
    A = ops.Matrix(torch.eye(2, dtype=torch.float64))
    y = torch.zeros(2, dtype=torch.float64)
    assert not LinearGaussianSVD.applies(
        post.InverseProblem(A, ops.GaussianNoise(torch.tensor([0.1, 0.2])), y)
    )
    assert not LinearGaussianSVD.applies(post.InverseProblem(A, ops.LaplaceNoise(0.1), y))
    with pytest.raises(ValueError, match="one noise level"):
        LinearGaussianSVD.of(post.InverseProblem(A, ops.GaussianNoise(torch.tensor([0.1, 0.2])), y), "test")


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 2), st.floats(0.05, 5), st.integers(0, 2**31))
def test_the_preconditioner_is_the_inverse_of_its_dense_matrix(d, k, lam, seed):
    """``P = (lam I + R diag(c2) R^T)^-1``: ``apply``, ``sqrt`` (``P^(1/2) P^(1/2) = P``),
    ``quadratic_inverse`` and ``log_det_inverse`` against the dense matrix."""
    k = min(k, d)
    g = torch.Generator().manual_seed(seed)
    R = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    c2 = torch.rand(k, generator=g, dtype=torch.float64) * 3
    P = Preconditioner(torch.tensor(lam, dtype=torch.float64), c2, lambda x: x @ R, lambda z: z @ R.T)
    dense = torch.linalg.inv(lam * torch.eye(d, dtype=torch.float64) + R @ torch.diag(c2) @ R.T)
    u = torch.randn(3, d, generator=g, dtype=torch.float64)
    assert torch.allclose(P.apply(u), u @ dense)
    assert torch.allclose(P.sqrt(P.sqrt(u)), P.apply(u))
    assert torch.allclose(P.quadratic_inverse(u), ((u @ torch.linalg.inv(dense)) * u).sum(1))
    assert torch.allclose(P.log_det_inverse(d), -torch.logdet(dense))


@SETTINGS
@given(st.floats(0.05, 20), st.floats(0.0, 0.95), st.floats(0.1, 5))
def test_the_widened_bridge_is_the_exact_reverse_step_of_gaussian_data(sigma, fraction, data_std):
    """For x0 ~ N(0, s^2 I), ``x_sigma' | x_sigma`` is Gaussian with variance ``(s^2 + sigma'^2) -
    (s^2 + sigma'^2)^2 / (s^2 + sigma^2)``; the bridge widened by ``Var[x0 | x_sigma] = sigma^2 s^2 /
    (s^2 + sigma^2)`` has it, the plain DDPM step does not."""
    s2, sn2, v2 = data_std**2, (fraction * sigma) ** 2, sigma**2
    exact = (s2 + sn2) - (s2 + sn2) ** 2 / (s2 + v2)
    x = torch.zeros(1, 1, dtype=torch.float64)
    sigma_t, next_t = (
        torch.tensor(sigma, dtype=torch.float64),
        torch.tensor(fraction * sigma, dtype=torch.float64),
    )
    _, widened = ancestral_moments(x, x, sigma_t, next_t, v2 * s2 / (s2 + v2))
    _, plain = ancestral_moments(x, x, sigma_t, next_t)
    assert math.isclose(float(widened), exact, rel_tol=1e-9, abs_tol=1e-12)
    assert float(plain) < exact  # the DDPM step is too narrow by (1 - r)^2 Var[x0 | x_sigma]


def test_x0_variance_estimates_the_posterior_variance_of_gaussian_data():
    """Particles x_sigma of N(0, s^2 I) data: the estimate is ``sigma^2 s^2 / (s^2 + sigma^2)`` within 4
    Monte-Carlo standard errors (of the mean of ``|x - D(x)|^2 / d``: 50000 particles per run), one value
    per run."""
    s2, sigma = 0.64, torch.tensor(1.5, dtype=torch.float64)
    prior = Gaussian(torch.zeros(4, dtype=torch.float64), s2)
    g = torch.Generator().manual_seed(0)
    n = 50_000
    x = (s2 + sigma**2).sqrt() * torch.randn(2 * n, 4, generator=g, dtype=torch.float64)
    x0_hat = prior.denoise(x, sigma)
    c = x0_variance(x, x0_hat, sigma, runs=2)
    assert c.shape == (2 * n,) and torch.equal(c[:n], c[:1].expand(n))
    exact = float(sigma**2 * s2 / (s2 + sigma**2))
    se = float(((x - x0_hat) ** 2).sum(1).div(4).std()) / n**0.5
    assert abs(float(c[0]) - exact) < 4 * se and abs(float(c[-1]) - exact) < 4 * se


def test_x0_variance_of_a_run_split_across_processes_uses_all_its_particles():
    """With ``gather`` (what the SMC core passes when a run's particles are split across processes) a
    shard's estimate is the whole run's, not its own: here the other shard's particles differ."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)  # 2 runs of 6 particles
    x0_hat = 0.3 * x
    x0_hat[:, 3:] = 0.9 * x[:, 3:]  # the second shard's half of each run
    sigma = torch.tensor(2.0, dtype=torch.float64)
    whole = x0_variance(x.reshape(12, 3), x0_hat.reshape(12, 3), sigma, runs=2)
    residual = ((x - x0_hat) ** 2).sum(-1)  # (2, 6)

    def gather(mine):  # this shard holds particles 0-2 of each run
        assert torch.equal(mine, residual[:, :3])
        return residual

    shard = x0_variance(x[:, :3].reshape(6, 3), x0_hat[:, :3].reshape(6, 3), sigma, runs=2, gather=gather)
    assert torch.allclose(shard, whole.reshape(2, 6)[:, :3].reshape(6))
    assert not torch.allclose(x0_variance(x[:, :3].reshape(6, 3), x0_hat[:, :3].reshape(6, 3), sigma, 2), shard)
