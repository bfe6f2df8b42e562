"""The SMC core and the particle samplers (AFDPS, TDS, MCGdiff), graded on exact mixture posteriors."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.priors import Gaussian, GaussianMixture
from posterior.samplers import twists
from posterior.samplers.resampling import ess, resample_indices

GUIDED_MOVE = twists.guided_move

SAMPLERS = {  # TDS is graded separately: its twist is over-confident on multimodal posteriors
    "afdps": lambda **kw: post.samplers.AFDPS(**kw),  # the Tweedie twist on these rank-1 problems
    "afdps-noisy": lambda **kw: post.samplers.AFDPS(twist="noisy", **kw),
    "afdps-tempered": lambda **kw: post.samplers.AFDPS(twist="tempered", **kw),
    "mcgdiff": lambda **kw: post.samplers.MCGdiff(**kw),
}


def mixture_problem(seed=0, sigma_y=0.5, batch=None):
    """25 unit-covariance modes on a grid in d = 2 and one random row: a multimodal posterior.
    ``batch``: that many measurements, one per run."""
    prior = GaussianMixture.grid(2, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=torch.float64) / 2**0.5)
    noise = ops.GaussianNoise(sigma_y)
    x_true = prior.sample(batch or 1, seed=2000 + seed)
    y = noise.sample(A(x_true), g)
    return prior, post.InverseProblem(A, noise, y if batch else y[0])


def run_estimates(result, exact):
    """Per-run weighted mode weights ``(B, K)`` (exact responsibilities) and weighted means ``(B, d)``
    (equal weights for an unweighted result)."""
    x = result.samples
    log_w = result.log_weights if result.log_weights is not None else x.new_zeros(x.shape[:2])
    W = torch.softmax(log_w, dim=1)
    B, N = W.shape
    resp = exact.responsibilities(x.reshape(B * N, -1)).reshape(B, N, -1)
    return torch.einsum("bn,bnk->bk", W, resp), torch.einsum("bn,bnd->bd", W, x)


# -- the core -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["systematic", "stratified", "multinomial", "residual"])
def test_resampling_is_unbiased(scheme):
    """4000 independent resamplings of N = 5 particles: the mean number of copies of particle i is
    N W_i within 4 standard errors (its variance is at most N W_i (1 - W_i), the multinomial one)."""
    W = torch.tensor([0.05, 0.4, 0.3, 0.2, 0.05], dtype=torch.float64)
    B, N = 4000, 5
    idx = resample_indices(W.log().expand(B, N), scheme, torch.Generator().manual_seed(0))
    assert idx.shape == (B, N) and int(idx.min()) >= 0 and int(idx.max()) < N
    counts = torch.zeros(B, N, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones(B, N, dtype=torch.float64)
    )
    se = (N * W * (1 - W) / B).sqrt()
    assert bool(((counts.mean(0) - N * W).abs() < 4 * se).all()), (counts.mean(0), N * W)
    if scheme in ("systematic", "residual"):
        assert bool((counts >= torch.floor(N * W)).all())
    if scheme == "systematic":
        assert bool((counts <= torch.ceil(N * W)).all())


def test_ess_of_equal_and_degenerate_weights():
    log_w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]], dtype=torch.float64)
    assert torch.allclose(ess(log_w), torch.tensor([4.0, 1.0], dtype=torch.float64))


# -- exactness on mixture posteriors ------------------------------------------------------------------


def mixture_check(result, exact):
    """The accuracy check of :func:`test_mode_weights_and_mean_match_the_exact_posterior`: the pooled mode
    weights and posterior mean of the runs against the exact ones, each error divided by its tolerance
    (4 standard errors from the spread of the runs plus 0.02, in weight or in posterior-std units).
    Returns ``(passed, worst mode-weight ratio, worst mean ratio)``; it passes when both are <= 1."""
    modes, means = run_estimates(result, exact)
    B = modes.shape[0]
    mode_ratio = (modes.mean(0) - exact.weights).abs() / (4 * modes.std(0) / B**0.5 + 0.02)
    mean_tol = 4 * means.std(0) / B**0.5 + 0.02 * exact.covariance().diagonal().sqrt()
    mean_ratio = (means.mean(0) - exact.mean()).abs() / mean_tol
    worst = float(mode_ratio.max()), float(mean_ratio.max())
    return max(worst) <= 1, *worst


def no_proposal_correction(m, v, grad, generator):
    """The guided move with the transition-density ratio ``log N(x'; m, v) - log N(x'; m + v g, v)``
    dropped from the weight: the guidance is then counted as if it were part of the target."""
    x, _ = GUIDED_MOVE(m, v, grad, generator)
    return x, m.new_zeros(m.shape[0])


class TDSWithoutTwistDenominator(post.samplers.TDS):
    """TDS whose weight increment omits ``- log psi_sigma(x)``, the previous step's twist: the twists of
    all levels multiply up instead of telescoping."""

    def propagate(self, ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread):
        x_next, new, increment = super().propagate(
            ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread
        )
        return x_next, new, increment + cache["log_psi"]


BROKEN = {  # name -> (sampler factory, drop the proposal correction?)
    "afdps-no-proposal-correction": (lambda **kw: post.samplers.AFDPS(**kw), True),
    "afdps-tempered-no-proposal-correction": (lambda **kw: post.samplers.AFDPS(twist="tempered", **kw), True),
    "tds-no-proposal-correction": (lambda **kw: post.samplers.TDS(**kw), True),
    "tds-no-twist-denominator": (lambda **kw: TDSWithoutTwistDenominator(**kw), False),
}


@pytest.mark.parametrize("name", [*SAMPLERS, "exact"])
def test_mode_weights_and_mean_match_the_exact_posterior(name):
    """8 independent runs of 512 particles, 100 steps, on a 25-mode prior whose posterior has several
    modes. The pooled mode weights and posterior mean are within 4 standard errors of the exact ones
    (the standard error from the spread of the 8 runs) plus 0.02, the discretisation bias of 100 steps
    measured with an exact twist during design (pooled top-mode weight 0.758 against 0.741 at 100
    steps; the mechanism is in ``docs/derivations.md``). Exact draws (8 x 512, equal
    weights) are run as a control. Measured worst error / tolerance (modes, mean): afdps 0.91, 0.31;
    afdps-noisy 0.81, 0.05; afdps-tempered 0.67, 0.18; mcgdiff 0.84, 0.57; exact 0.11, 0.06. The broken variants that fail the same check are in
    :func:`test_broken_smc_variants_fail_the_mixture_check`."""
    prior, problem = mixture_problem()
    exact = prior.posterior(problem)
    sampler = post.samplers.ExactPosterior() if name == "exact" else SAMPLERS[name](steps=100)
    result = sampler.sample(problem, prior, 512, chains=8, seed=0, progress=False)
    if name != "exact":
        assert result.log_weights.shape == (8, 512) and result.log_weights.dtype == torch.float64
    passed, mode_ratio, mean_ratio = mixture_check(result, exact)
    assert passed, (name, mode_ratio, mean_ratio)


@pytest.mark.parametrize(
    "name", ["afdps-no-proposal-correction", "afdps-tempered-no-proposal-correction", "exact-sigma-y-doubled"]
)
def test_broken_smc_variants_fail_the_mixture_check(name, monkeypatch, noise_doubled_exact):
    """The check of :func:`test_mode_weights_and_mean_match_the_exact_posterior` can fail: the same
    problem, runs and bars reject AFDPS (Tweedie and tempered twists) with the proposal correction
    dropped from the weight (the likelihood guidance counted twice) and exact draws from the posterior
    with sigma_y doubled. Measured worst error / tolerance (modes, mean), against 1: afdps without the
    correction 2.76, 3.31; tempered 2.45, 2.12; sigma_y doubled 5.58, 2.03 (seeds 1, 2: 4.10, 3.07)."""
    prior, problem = mixture_problem()
    exact = prior.posterior(problem)
    if name == "exact-sigma-y-doubled":
        sampler = noise_doubled_exact
    else:
        make, drop = BROKEN[name]
        sampler = make(steps=100)
        if drop:
            monkeypatch.setattr(twists, "guided_move", no_proposal_correction)
    result = sampler.sample(problem, prior, 512, chains=8, seed=0, progress=False)
    passed, mode_ratio, mean_ratio = mixture_check(result, exact)
    assert not passed, (name, mode_ratio, mean_ratio)
    assert max(mode_ratio, mean_ratio) > 2, (name, mode_ratio, mean_ratio)  # by a wide margin


def test_afdps_tracks_every_intermediate_target():
    """Step by step: with the noisy twist and one measurement row ``a``, the intermediate target
    ``p_sigma(x) N(y; a.x, sigma_y^2 + sigma^2 |a|^2)`` is the exact posterior of the noised prior under
    that noise level. At every recorded level the weighted mode weights of 8 runs x 512 particles are
    within 4 standard errors (+0.02) of the exact ones. 200 steps: at 60 the prior chain's
    discretisation alone shifts the mode weights by 0.09 below sigma = 1 (measured)."""
    prior, problem = mixture_problem()
    a2 = float((problem.operator.to_matrix() ** 2).sum())
    states = []
    sampler = post.samplers.AFDPS(steps=200, twist="noisy")
    sampler.sample(
        problem, prior, 512, chains=8, seed=0, progress=False, callback=lambda i, st: states.append(st)
    )
    checked = 0
    for state in states[::20]:
        sigma = float(state["sigma"])
        noise = ops.GaussianNoise((0.5**2 + sigma**2 * a2) ** 0.5)
        target = prior.noised(sigma).posterior(post.InverseProblem(problem.operator, noise, problem.y))
        W = torch.softmax(state["log_weights"], 1)
        resp = target.responsibilities(state["x"]).reshape(8, 512, -1)
        modes = torch.einsum("bn,bnk->bk", W, resp)
        err = (modes.mean(0) - target.weights).abs()
        assert bool((err <= 4 * modes.std(0) / 8**0.5 + 0.02).all()), (sigma, err.max())
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ["afdps", "afdps-noisy", "mcgdiff"])
def test_log_evidence_matches_the_exact_one(name):
    """16 runs of 256 particles: the mean of the runs' log Z estimates is within 3 standard errors
    (from their spread) of the exact log evidence; two measurements, 8 runs each, in one call."""
    prior, problem = mixture_problem(batch=2)
    y = problem.y.repeat(8, 1)  # run b sees measurement b % 2
    result = SAMPLERS[name](steps=100).sample(
        post.InverseProblem(problem.operator, problem.noise, y), prior, 256, chains=16, seed=1, progress=False
    )
    log_z = result.trace["log_evidence"][-1]
    assert log_z.shape == (16,)
    for k in range(2):
        single = post.InverseProblem(problem.operator, problem.noise, problem.y[k])
        exact = float(prior.log_evidence(single))
        runs = log_z[k::2]
        se = float(runs.std()) / len(runs) ** 0.5
        assert abs(float(runs.mean()) - exact) < 3 * se + 1e-3, (name, k, runs.tolist(), exact)


def gaussian_tds_problem():
    """A N(m, I) prior in d = 2 and one row: TDS's twist is the exact ``p(y | x_sigma)`` there."""
    prior = Gaussian(torch.tensor([3.0, -2.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    A = ops.Matrix(torch.tensor([[0.8, 0.3]], dtype=torch.float64))
    return prior, post.InverseProblem(A, ops.GaussianNoise(0.2), torch.tensor([1.0], dtype=torch.float64))


def tds_check(result, prior, problem):
    """The accuracy check of :func:`test_tds_is_exact_where_its_twist_is`: the runs' mean log Z and pooled
    weighted mean against the exact ones, each error divided by its tolerance (3 standard errors from the
    spread of the 8 runs, plus 0.01). Returns ``(passed, log Z ratio, worst mean ratio)``."""
    log_z = result.trace["log_evidence"][-1]
    B = log_z.numel()
    z_ratio = abs(float(log_z.mean() - prior.log_evidence(problem))) / (
        3 * float(log_z.std()) / B**0.5 + 0.01
    )
    means = torch.einsum("bn,bnd->bd", torch.softmax(result.log_weights, 1), result.samples)
    err = (means.mean(0) - prior.posterior(problem).mean()).abs()
    mean_ratio = float((err / (3 * means.std(0) / B**0.5 + 0.01)).max())
    return max(z_ratio, mean_ratio) <= 1, z_ratio, mean_ratio


def test_tds_is_exact_where_its_twist_is():
    """For a prior N(m, I) the TDS twist N(y; A x0_hat, sigma_y^2 + r^2 A A^T), r^2 = sigma^2/(1+sigma^2),
    is the exact p(y | x_sigma): 8 runs of 256 particles give log Z and the posterior mean within 3
    standard errors (plus 0.01, the 100-step discretisation) of the exact ones (measured error /
    tolerance: 0.25 and 0.25; seeds 1, 2: at most 0.41). On multimodal posteriors the same twist is
    over-confident (measured: weights collapse, log Z 14 nats low). Broken variants that fail the same
    check: :func:`test_broken_tds_variants_fail_the_gaussian_check`."""
    prior, problem = gaussian_tds_problem()
    result = post.samplers.TDS(steps=100).sample(problem, prior, 256, chains=8, seed=0, progress=False)
    passed, z_ratio, mean_ratio = tds_check(result, prior, problem)
    assert passed, (z_ratio, mean_ratio)


@pytest.mark.parametrize("name", ["tds-no-twist-denominator", "tds-no-proposal-correction"])
def test_broken_tds_variants_fail_the_gaussian_check(name, monkeypatch):
    """The check of :func:`test_tds_is_exact_where_its_twist_is` can fail: the same problem, runs and bars
    reject TDS without the twist denominator in the weight and TDS without the proposal correction.
    Measured error / tolerance (log Z, mean), against 1: no twist denominator 284, 0.88 (seeds 1, 2: 310,
    161); no proposal correction 37, 0.33 (seeds 1, 2: 28, 34). Both also fail the mixture check of
    :func:`test_mode_weights_and_mean_match_the_exact_posterior` (worst ratios 10.7 and 4.0, where
    correct TDS measures 0.92), not run here to save time."""
    prior, problem = gaussian_tds_problem()
    make, drop = BROKEN[name]
    if drop:
        monkeypatch.setattr(twists, "guided_move", no_proposal_correction)
    result = make(steps=100).sample(problem, prior, 256, chains=8, seed=0, progress=False)
    passed, z_ratio, mean_ratio = tds_check(result, prior, problem)
    assert not passed, (name, z_ratio, mean_ratio)
    assert z_ratio > 10, (name, z_ratio)  # by a wide margin


NONLINEAR_BAR = 5.0  # largest |z| over the 7 features of the sign-ambiguous problem (derivation below)


def nonlinear_run(name, reference, monkeypatch):
    """16 runs of 256 particles, 100 steps, of variant ``name`` on the sign-ambiguous problem: ``(error, z)``."""
    if name in SAMPLERS:
        sampler = SAMPLERS[name](steps=100)
    elif name == "tds":
        sampler = post.samplers.TDS(steps=100)
    else:
        make, drop = BROKEN[name]
        sampler = make(steps=100)
        if drop:
            monkeypatch.setattr(twists, "guided_move", no_proposal_correction)
    result = sampler.sample(reference.problem, reference.prior, 256, chains=16, seed=0, progress=False)
    return reference.errors(result)


@pytest.mark.parametrize("name", ["afdps-tempered", "tds"])
def test_twists_match_the_quadrature_posterior_of_a_nonlinear_problem(
    name, sign_ambiguous_problem, monkeypatch
):
    """The tempered twist (AFDPS) and TDS's twist through the denoiser on ``y = x^2 + noise`` in d = 2
    (``sign_ambiguous_problem``: 3-mode mixture prior, posterior with four sign modes, reference moments
    by quadrature). 16 runs of 256 particles, 100 steps: for each of 7 features (the means, the second
    moments, the sign probabilities ``P(x_j > 0)``) the pooled weighted estimate is within
    ``NONLINEAR_BAR = 5`` standard errors of the exact value, the standard error from the spread of the
    16 runs (the reference has none). For a t-distribution with 15 degrees of freedom ``P(|t| > 5) =
    1.6e-4``, so 7 features exceed it with probability ~1e-3. Measured max |z| at seeds 0, 1, 2:
    afdps-tempered 2.2, 2.7, 1.3; TDS 1.9, 2.5, 2.1. Broken variants that fail the same check:
    :func:`test_broken_twisted_samplers_fail_the_nonlinear_check`."""
    error, z = nonlinear_run(name, sign_ambiguous_problem, monkeypatch)
    assert float(z.abs().max()) < NONLINEAR_BAR, (name, error, z)


@pytest.mark.parametrize(
    "name",
    ["afdps-tempered-no-proposal-correction", "tds-no-proposal-correction", "tds-no-twist-denominator"],
)
def test_broken_twisted_samplers_fail_the_nonlinear_check(name, sign_ambiguous_problem, monkeypatch):
    """The check of :func:`test_twists_match_the_quadrature_posterior_of_a_nonlinear_problem` can fail:
    the same problem, runs, statistic and bar reject the tempered AFDPS and TDS without the proposal
    correction and TDS without the twist denominator. Measured max |z| at seeds 0, 1, 2, against 5:
    afdps-tempered without the correction 11.0, 11.5, 8.8; TDS without the correction 31.0, 27.9, 25.2;
    TDS without the twist denominator 70.3, 95.7, 82.6."""
    error, z = nonlinear_run(name, sign_ambiguous_problem, monkeypatch)
    assert float(z.abs().max()) > NONLINEAR_BAR, (name, error, z)


def test_weights_trace_and_unweighted_output():
    prior, problem = mixture_problem()
    weighted = post.samplers.MCGdiff(steps=20).sample(problem, prior, 64, chains=3, seed=0, progress=False)
    trace = weighted.trace
    assert trace["ess"].shape == (len(trace["sigma"]), 3) and trace["resampled"].dtype == torch.bool
    assert bool(((trace["ess"] > 0) & (trace["ess"] <= 1 + 1e-12)).all())
    assert float(trace["sigma"][-1]) == 0 and bool((trace["sigma"].diff() < 0).all())
    again = post.samplers.MCGdiff(steps=20).sample(problem, prior, 64, chains=3, seed=0, progress=False)
    assert torch.equal(weighted.samples, again.samples) and torch.equal(
        weighted.log_weights, again.log_weights
    )
    flat = post.samplers.MCGdiff(steps=20, resample=True).sample(
        problem, prior, 64, chains=3, seed=0, progress=False
    )
    assert flat.log_weights is None and flat.samples.shape == (3, 64, 2)
    # the resampled set holds copies of the weighted particles
    assert torch.isin(flat.samples[0, :, 0], weighted.samples[0, :, 0]).all()


def test_adaptive_steps_split_where_the_ess_collapses():
    """The clean-likelihood twist with a sharp likelihood and 8 steps: the ESS halves within steps, so
    bisection adds levels (and NFE); without it the grid is kept."""
    prior, problem = mixture_problem(sigma_y=0.05)
    fixed = post.samplers.AFDPS(steps=8, twist="clean").sample(problem, prior, 128, seed=0, progress=False)
    adaptive = post.samplers.AFDPS(steps=8, twist="clean", max_bisections=2).sample(
        problem, prior, 128, seed=0, progress=False
    )
    assert len(fixed.trace["sigma"]) == 9 and fixed.nfe == 8
    assert len(adaptive.trace["sigma"]) > 9 and adaptive.nfe > len(adaptive.trace["sigma"]) - 1
    assert bool((adaptive.trace["sigma"].diff() < 0).all())


# -- other problems and errors ----------------------------------------------------------------------


def image_prior():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    covariances = 0.01 + 0.02 * torch.rand(3, 64, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), covariances)


def pyro_poisson_model(z):
    return pyro.sample("y", dist.Poisson(10 * torch.exp(z)).to_event(3))


NONLINEAR = {
    "phase-retrieval": lambda: (ops.PhaseRetrieval((1, 8, 8)), ops.GaussianNoise(0.05)),
    "pyro-poisson": lambda: (ops.Identity((1, 8, 8)), ops.PyroLikelihood(pyro_poisson_model)),
}


@pytest.mark.parametrize("problem_name", list(NONLINEAR))
@pytest.mark.parametrize("sampler", [post.samplers.AFDPS, post.samplers.TDS])
def test_afdps_and_tds_run_on_nonlinear_and_pyro_likelihoods(problem_name, sampler):
    prior = image_prior()
    operator, noise = NONLINEAR[problem_name]()
    y = noise.sample(operator(prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(operator, noise, y)
    result = sampler(steps=20).sample(problem, prior, 32, chains=2, seed=0, progress=False)
    assert result.samples.shape == (2, 32, 1, 8, 8) and bool(torch.isfinite(result.samples).all())
    assert bool(torch.isfinite(result.log_weights).any(1).all())
    assert bool(torch.isfinite(result.trace["log_evidence"]).all())
    assert result.nfe >= 20


@pytest.mark.parametrize(
    "operator, noise, message",
    [
        (ops.PhaseRetrieval((1, 8, 8)), ops.GaussianNoise(0.05), "linear operator with Gaussian noise"),
        (ops.Identity((1, 8, 8)), ops.PoissonNoise(gain=10.0), "linear operator with Gaussian noise"),
        (
            ops.Identity((1, 8, 8)),
            ops.GaussianNoise(torch.linspace(0.1, 0.2, 64).reshape(1, 8, 8)),
            "one noise level",
        ),
    ],
)
def test_mcgdiff_refuses_problems_outside_its_scope(operator, noise, message):
    prior = image_prior()
    y = noise.sample(operator(prior.sample(1, seed=1).double()), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(operator, noise, y)
    with pytest.raises(ValueError, match=message):
        post.samplers.MCGdiff(steps=10).sample(problem, prior, 4, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"steps": 1},
        {"resampling": "bogus"},
        {"ess_threshold": 1.5},
        {"max_bisections": -1},
        {"twist": "bogus"},
        {"proposal": "optimal", "twist": "tweedie"},
        {"kernel": "euler"},
        {"tempering_scale": 0.0},
    ],
)
def test_afdps_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        post.samplers.AFDPS(**kwargs)


def test_batched_measurements_must_match_runs_or_particles():
    prior, problem = mixture_problem(batch=3)
    with pytest.raises(ValueError, match="one per chain"):
        post.samplers.MCGdiff(steps=10).sample(problem, prior, 4, chains=2, progress=False)
    # one measurement per particle would let resampling mix problems: refused
    prior, problem = mixture_problem(batch=4)
    with pytest.raises(ValueError, match="share one measurement"):
        post.samplers.MCGdiff(steps=10).sample(problem, prior, 2, chains=2, progress=False)


def test_digits_box_inpainting_gives_different_completions_where_the_data_is_ambiguous():
    """The bundled digits prior, the upper half hidden, 8 AFDPS runs of 8 particles (30 steps): the
    posterior std in the hidden half is several times that in the observed half (measured 0.10 against
    0.016), the runs' completions differ (largest distance between two runs' means in the hidden half
    2.7, mean 1.8; 1.0 is a faint stroke), and the result carries weights and every run's ESS trace."""
    pytest.importorskip("sklearn")
    from posterior.data import digits
    from posterior.priors import pretrained

    prior = pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    noise = ops.GaussianNoise(0.05)
    y = noise.sample(operator(digits("test")[11:12]), torch.Generator().manual_seed(0))[0]
    result = post.samplers.AFDPS(steps=30).sample(
        post.InverseProblem(operator, noise, y), prior, 8, chains=8, seed=0, progress=False
    )
    assert result.log_weights.shape == (8, 8) and result.trace["ess"].shape == (31, 8)
    std = result.std()[0]
    assert float(std[:8].mean()) > 3 * float(std[8:].mean()), (std[:8].mean(), std[8:].mean())
    runs = torch.einsum("bn,bn...->b...", torch.softmax(result.log_weights, 1).float(), result.samples)
    hidden = runs[:, 0, :8].reshape(8, -1)
    assert float(torch.cdist(hidden, hidden).max()) > 1.0  # whole completions differ between runs


def separated_problem():
    """A 4-d grid mixture (25 unit modes, spacing 8) seen through 2 random rows with singular values in
    (0, 1) and sigma_y = 0.5 (the MCGdiff protocol of ``benchmarks/gmm.py --grid``): a posterior with a
    few separated modes; returns ``(prior, problem, exact posterior)``."""
    prior = GaussianMixture.grid(4, seed=1)
    g = torch.Generator().manual_seed(10_000 + 97 * 4 + 13 * 2 + 1)
    U, _, Vh = torch.linalg.svd(torch.randn(2, 4, generator=g, dtype=torch.float64), full_matrices=False)
    s = torch.sort(torch.rand(2, generator=g, dtype=torch.float64), descending=True).values
    A = ops.Matrix(U @ torch.diag(s) @ Vh)
    noise = ops.GaussianNoise(0.5)
    y = noise.sample(A(prior.sample(1, seed=20_001)), g)[0]
    problem = post.InverseProblem(A, noise, y)
    return prior, problem, prior.posterior(problem)


def test_x0_uncertainty_shrinks_the_discretisation_error(monkeypatch):
    """At 20 levels the ancestral kernel's missing variance dominates AFDPS's error on separated modes.
    Widening the kernel by the particles' estimate of Var[x0 | x_sigma] brings the sliced Wasserstein
    ratio to the exact-vs-exact floor (mean of 4 seeds of 2000 particles; seed-to-seed spread about
    0.4, so the mean's about 0.2) from about 5.5 to about 2.6 (AFDPS's default). Broken variants it
    rejects: the kernel not widened (``x0_uncertainty=False``, the DDPM step) and the estimate doubled
    (measured about 3.5)."""
    import posterior.samplers.smc as smc

    prior, problem, exact = separated_problem()
    n = 2000
    floor = metrics.floor(metrics.sliced_wasserstein, lambda m, s: exact.sample(m, seed=s), n, n)
    reference = exact.sample(n, seed=999)

    def ratio(**settings) -> float:
        runs = [
            post.samplers.AFDPS(steps=20, **settings).sample(problem, prior, n, seed=s, progress=False)
            for s in range(4)
        ]
        return (
            sum(metrics.sliced_wasserstein(r.resampled(seed=0).flat(), reference) for r in runs) / 4 / floor
        )

    widened = ratio()
    assert widened < 3.0, widened
    assert ratio(x0_uncertainty=False) > 4.5
    estimate = smc.x0_variance
    monkeypatch.setattr(smc, "x0_variance", lambda *args: 2 * estimate(*args))
    assert ratio() > 3.0


def test_x0_uncertainty_moves_runs_with_no_variance_left_without_nan():
    """On the step to sigma = 0 the widened variance is the run's estimate alone, which may be 0 in one
    run and not in another: the runs with 0 stay at the kernel's mean, the others move, nothing is NaN."""
    m = torch.zeros(4, 3, dtype=torch.float64)
    grad = torch.ones(4, 3, dtype=torch.float64)
    x, log_ratio = twists.guided_move(
        m, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), grad, torch.Generator().manual_seed(0)
    )
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(log_ratio).all())
    assert torch.equal(x[:2], m[:2]) and torch.equal(log_ratio[:2], torch.zeros(2, dtype=torch.float64))
    assert not torch.equal(x[2:], m[2:])


def test_x0_uncertainty_defaults_and_refusal():
    """AFDPS widens its ancestral kernel unless told not to, never the ODE kernel (and refuses to be
    told to); TDS and MCGdiff widen only when asked."""
    S = post.samplers
    assert S.AFDPS().widens_kernel() and not S.AFDPS(x0_uncertainty=False).widens_kernel()
    assert not S.AFDPS(kernel="ode").widens_kernel()
    assert not S.TDS().widens_kernel() and S.TDS(x0_uncertainty=True).widens_kernel()
    assert not S.MCGdiff().widens_kernel() and S.MCGdiff(x0_uncertainty=True).widens_kernel()
    with pytest.raises(ValueError, match="kernel='ode' has no variance to widen"):
        S.AFDPS(kernel="ode", x0_uncertainty=True)


def test_the_core_estimates_the_spread_over_the_whole_run(monkeypatch, overlapping_problem):
    """The SMC core hands ``x0_variance`` the run's gather (identity in one process, an all-gather
    across the processes that share a run), once per step and only when the kernel is widened."""
    import posterior.samplers.smc as smc

    prior, problem = overlapping_problem(2)
    estimate, gathers = smc.x0_variance, []

    def recording(x, x0_hat, sigma, runs, gather=None):
        gathers.append(gather)
        return estimate(x, x0_hat, sigma, runs, gather)

    monkeypatch.setattr(smc, "x0_variance", recording)
    post.samplers.AFDPS(steps=5).sample(problem, prior, 6, chains=2, seed=0, progress=False)
    assert len(gathers) == 5 and all(isinstance(g.__self__, smc.Shards) for g in gathers)
    gathers.clear()
    post.samplers.AFDPS(steps=5, x0_uncertainty=False).sample(
        problem, prior, 6, chains=2, seed=0, progress=False
    )
    assert gathers == []
