"""Levenberg-Marquardt-Langevin: the preconditioned step, its Metropolis adjustment, the annealed sampler."""

import math

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture
from posterior.samplers import langevin
from posterior.samplers.langevin import Preconditioner, lml_step, log_proposal
from posterior.samplers.lml import reshape_direction
from posterior.utils import randn


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


LML_BAR = 6.5  # largest |z| over the observed coordinates' means and variances (derivation below)

LML_VARIANTS = {  # name -> (sampler factory, isotropic noise?)
    "unadjusted": (lambda: post.samplers.LevenbergMarquardtLangevin(steps=50), False),
    "metropolis": (
        lambda: post.samplers.LevenbergMarquardtLangevin(steps=50, metropolis=True, corrector_steps=2),
        False,
    ),
    "exact": (post.samplers.ExactPosterior, False),
    # deliberately broken: each must fail the same check
    "corrector-off": (lambda: post.samplers.LevenbergMarquardtLangevin(steps=50, corrector_steps=0), False),
    "isotropic-noise": (lambda: post.samplers.LevenbergMarquardtLangevin(steps=50), True),
}


def isotropic_step(x, score, P, h, generator):
    """LML's step with the drift preconditioned but the noise isotropic, ``sqrt(2h / lam) xi``: the noise
    no longer matches ``P`` along the observed directions, so the chain targets a wider law there."""
    xi = randn(x.shape, generator, x.dtype, x.device)
    return x + h * P.apply(score) + math.sqrt(2 * h) * Preconditioner(P.lam).sqrt(xi)


def lml_check(name, problem, prior, monkeypatch, observed_moment_errors, noise_doubled_exact):
    """Runs variant ``name`` (1000 draws, seed 0) through the accuracy check of
    :func:`test_annealed_sampler_on_overlapping_modes`: ``(passed, max |z|, SW / floor, result)``."""
    if name == "exact-sigma-y-doubled":
        sampler = noise_doubled_exact
    else:
        make, isotropic = LML_VARIANTS[name]
        sampler = make()
        if isotropic:
            monkeypatch.setattr(langevin, "lml_step", isotropic_step)
    result = sampler.sample(problem, prior, 1000, seed=0, progress=False)
    monkeypatch.undo()
    draws = result.flat()
    exact = prior.posterior(problem)
    z_mean, z_var = observed_moment_errors(draws, exact, problem.operator.to_matrix())
    z = float(torch.cat([z_mean, z_var]).abs().max())
    floor = post.metrics.floor(
        post.metrics.sliced_wasserstein, lambda k, s: exact.sample(k, seed=s), 1000, 1000
    )
    sw = post.metrics.sliced_wasserstein(draws, exact.sample(1000, seed=999)) / floor
    return z < LML_BAR and sw < 3, z, sw, result


@pytest.mark.parametrize("name", ["unadjusted", "metropolis", "exact"])
def test_annealed_sampler_on_overlapping_modes(
    name, overlapping_problem, monkeypatch, observed_moment_errors, noise_doubled_exact
):
    """Overlapping 10-mode mixture in d = 8 (``overlapping_problem``) with 4 rows, so that the likelihood
    shapes 4 of the 8 directions; 1000 draws at 50 levels. The check: (a) along each observed direction
    (right singular vector of A) the draws' mean and variance are within ``LML_BAR = 6.5`` standard
    errors of the exact posterior's (closed-form standard errors of 1000 independent draws, see
    ``observed_moment_errors`` in conftest.py): 4 for the Monte-Carlo error (8 statistics; exact draws
    exceed 4 with probability ~5e-4) plus 2.5 for the unadjusted chain's O(h) bias, a variance
    inflated by up to ``h / (2 - h) = 0.11`` at ``h = 0.2`` along the preconditioned directions, which
    is 2.5 standard errors of a Gaussian coordinate's variance at n = 1000; and (b) the sliced
    Wasserstein distance within 3x its exact-vs-exact floor. The exact sampler is run as a control.
    Measured max |z| at seed 0 (seeds 0-5) / SW ratio: unadjusted 3.0 (3.0-4.7) / 1.5, Metropolis
    1.6 (1.3-1.9) / 0.95, exact draws 2.3 (1.8-2.7) / 0.9. The broken variants that fail the same
    check are in :func:`test_broken_variants_fail_the_annealed_sampler_check`."""
    prior, problem = overlapping_problem(rows=4)
    passed, z, sw, result = lml_check(
        name, problem, prior, monkeypatch, observed_moment_errors, noise_doubled_exact
    )
    assert passed, (name, z, sw)
    if name == "metropolis":
        assert 0.3 < float(result.trace["acceptance"]) <= 1


@pytest.mark.parametrize("name", ["corrector-off", "isotropic-noise", "exact-sigma-y-doubled"])
def test_broken_variants_fail_the_annealed_sampler_check(
    name, overlapping_problem, monkeypatch, observed_moment_errors, noise_doubled_exact
):
    """The check of :func:`test_annealed_sampler_on_overlapping_modes` can fail: the same problem, draws,
    statistic and bar reject LML with the corrector off (the annealed surrogate alone: observed variances
    half the exact ones), LML with isotropic instead of ``P^(1/2)``-preconditioned noise, and exact draws
    from the posterior with sigma_y doubled. Measured max |z| at seed 0 (seeds 0-5) / SW ratio:
    corrector off 14.6 (14-15) / 3.6, isotropic noise 177 (177-194) / 4.0, sigma_y doubled 54 (43-54) /
    4.8, against the bar 6.5 / 3. On the former check (one row, SW alone) all three passed (SW ratios
    2.0, 1.6, 1.8 under 3, with these implementations): SW over 8 directions barely sees errors confined
    to one."""
    prior, problem = overlapping_problem(rows=4)
    passed, z, sw, _ = lml_check(
        name, problem, prior, monkeypatch, observed_moment_errors, noise_doubled_exact
    )
    assert not passed, (name, z, sw)
    assert z > 2 * LML_BAR, (name, z)  # rejected by a wide margin, not by chance


def unpreconditioned_step(x, score, P, h, generator):
    """LML's step with the noise not scaled by ``P^(1/2)``: ``x + h P s + sqrt(2h) xi``."""
    return x + h * P.apply(score) + math.sqrt(2 * h) * randn(x.shape, generator, x.dtype, x.device)


def nonlinear_lml_check(name, reference, monkeypatch):
    """Variant ``name`` of LML on the sign-ambiguous problem, 16 chains of 256 draws, 100 levels, through
    the check of :func:`test_scalar_preconditioner_on_a_nonlinear_problem_against_quadrature`:
    ``(passed, max |z| of the second moments, max |error| of the sign probabilities)``."""
    kwargs = {"corrector_steps": 0} if name == "corrector-off" else {}
    if name == "unpreconditioned-noise":
        monkeypatch.setattr(langevin, "lml_step", unpreconditioned_step)
    result = post.samplers.LevenbergMarquardtLangevin(steps=100, **kwargs).sample(
        reference.problem, reference.prior, 256, chains=16, seed=0, progress=False
    )
    monkeypatch.undo()
    error, z = reference.errors(result)
    moments, signs = float(z[2:5].abs().max()), float(error[5:].abs().max())
    return moments < 10 and signs < 0.35, moments, signs


def test_scalar_preconditioner_on_a_nonlinear_problem_against_quadrature(sign_ambiguous_problem, monkeypatch):
    """Non-linear problems use DPS's likelihood at the Tweedie estimate, tempered, and the scalar
    preconditioner ``lam + beta / tau_ref^2``: an approximate sampler. On ``y = x^2 + noise`` in d = 2
    (``sign_ambiguous_problem``, reference by quadrature) 16 chains of 256 draws at 100 levels.
    Honest bars, set at what the sampler does: (a) the second moments ``E x0^2, E x1^2, E x0 x1`` (the
    magnitudes the data fix) within 10 standard errors (from the spread of the 16 chains; 5 would be
    the Monte-Carlo bar of the twisted samplers, the other 5 is the measured bias, ``E x1^2`` 10% high
    like the O(h) variance inflation of the linear case): measured max |z| 6.7, 5.9, 4.0 at seeds 0-2;
    (b) the sign probabilities ``P(x_j > 0)`` within 0.35: LML is genuinely biased there, measured
    ``P(x0 > 0)`` 0.25 against the exact 0.52 (error 0.264, 0.272, 0.268 at seeds 0-2; the same with
    200 levels or 3 corrector steps at h = 0.1, so it is the surrogate, not the discretisation), and its
    means follow (``E x0`` 1.4 off). It does not choose the prior's sign modes the way the exact
    posterior does; AFDPS and TDS do (``test_smc.py``). Broken variants that fail the same check:
    :func:`test_broken_lml_variants_fail_the_nonlinear_check`."""
    passed, moments, signs = nonlinear_lml_check("lml", sign_ambiguous_problem, monkeypatch)
    assert passed, (moments, signs)


@pytest.mark.parametrize("name", ["corrector-off", "unpreconditioned-noise"])
def test_broken_lml_variants_fail_the_nonlinear_check(name, sign_ambiguous_problem, monkeypatch):
    """The check of :func:`test_scalar_preconditioner_on_a_nonlinear_problem_against_quadrature` can fail:
    the same problem, draws and bars reject LML with the corrector off and LML with noise not scaled by
    ``P^(1/2)``. Measured max |z| of the second moments at seeds 0-2, against 10: corrector off 25.6,
    29.6, 25.2; unpreconditioned noise 58.5, 39.6, 38.1 (their sign errors, 0.28-0.30, pass (b))."""
    passed, moments, signs = nonlinear_lml_check(name, sign_ambiguous_problem, monkeypatch)
    assert not passed, (name, moments, signs)


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


@pytest.mark.parametrize(
    "variant, passes",
    [("smc", True), ("broken: annealed start", False), ("broken: every draw from one particle", False)],
)
def test_smc_start_gives_the_exact_mode_weights(variant, passes, monkeypatch, separated_modes):
    """The separated problem (:func:`separated_problem`, as in ``test_dlg.py``: 4 modes of weight 0.34, 0.33, 0.21, 0.11): 1000 draws of
    LML with the SMC start (a population of 1 particle per draw, then 2 corrector steps at the last
    level) put the exact fractions on the modes within 4.5 standard errors (``mode_weight_z``, 1000
    independent draws); the annealed start (its particles commit to modes at high noise) and draws all
    taken from one particle are rejected by the same bar. The population has 200 levels (at 50, AFDPS's
    own discretisation error shows: max z 3.4-4.4 at seeds 0-2 with one particle per draw, 5.3-6.2 with
    two). Measured max z at seed 0: smc 2.6, annealed 51."""
    separated_problem, mode_weight_z, one_particle = separated_modes
    prior, problem, exact = separated_problem()
    start = "anneal" if variant == "broken: annealed start" else "smc"
    if variant == "broken: every draw from one particle":
        monkeypatch.setattr(post.samplers.population, "inverse_cdf", one_particle)
    sampler = post.samplers.LevenbergMarquardtLangevin(
        steps=50, corrector_steps=2, start=start, start_particles=1, start_steps=200
    )
    result = sampler.sample(problem, prior, 1000, seed=0, progress=False)
    z = mode_weight_z(result.flat(), exact, 1000, 1000)
    assert (z < 4.5) == passes, (variant, z)
    if variant == "smc":  # the population's 200 levels, 2 corrector steps, the Tweedie step
        assert result.nfe == 200 + 2 + 1
