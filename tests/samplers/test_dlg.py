"""Denoising Langevin Gibbs: the sigma-conditional draws, accuracy on exact posteriors, diagnostics."""

import warnings

import pytest
import torch
from scipy import stats

import operators as ops
import posterior as post
from posterior.samplers.resampling import draw_categorical


def test_sigma_draws_follow_the_exact_sigma_conditional(overlapping_problem):
    """For three fixed states x, 20000 Gibbs draws of sigma match P(sigma_g | x, y) ∝ p_sigma_g(x)
    N(y; A x, sigma_y^2 I + sigma_g^2 A A^T), computed here independently (noised mixture and a dense
    Gaussian), by a chi-square test (bins with expected count < 5 merged) at level 1e-3."""
    prior, problem = overlapping_problem(rows=2)
    sampler = post.samplers.DenoisingLangevinGibbs(levels=30, sigma_low=0.05, sigma_high=10.0)
    grid = sampler.grid(prior, torch.float64, "cpu")
    surrogate = post.samplers.langevin.LikelihoodSurrogate.of(problem, prior, 1.0, "test")
    A = problem.operator.to_matrix()
    x = prior.sample(3, seed=4) + 0.3 * torch.randn(
        3, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    logits = sampler.sigma_logits(problem, prior, surrogate, x, grid)
    for i in range(3):
        exact = torch.stack(
            [
                prior.noised(s).log_prob(x[i : i + 1])[0]
                + torch.distributions.MultivariateNormal(
                    A @ x[i], 0.25 * torch.eye(2, dtype=torch.float64) + s**2 * A @ A.T
                ).log_prob(problem.y)
                for s in grid
            ]
        )
        p = torch.softmax(exact, 0)
        draws = draw_categorical(logits[i : i + 1].expand(20000, -1), torch.Generator().manual_seed(i))
        counts = torch.bincount(draws, minlength=grid.numel()).double()
        keep = 20000 * p >= 5
        observed = torch.cat([counts[keep], counts[~keep].sum(0, keepdim=True)])
        expected = torch.cat([20000 * p[keep], 20000 * p[~keep].sum(0, keepdim=True)])
        if float(expected[-1]) < 5:  # fold a tiny remainder into the largest bin
            observed, expected = observed[:-1], expected[:-1]
            observed[observed.argmax()] += counts[~keep].sum()
            expected[expected.argmax()] += 20000 * p[~keep].sum()
        assert stats.chisquare(observed.numpy(), expected.numpy()).pvalue > 1e-3
        assert int(keep.sum()) >= 3  # the conditional is spread over several levels: a draw, not an argmax


def test_overlapping_modes_within_three_times_the_floor(overlapping_problem):
    """100 chains x 10 draws (burn-in 100, thin 5): measured 1.4x the floor; the bar is 3x."""
    prior, problem = overlapping_problem()
    exact = prior.posterior(problem)
    result = post.samplers.DenoisingLangevinGibbs(burn_in=100).sample(
        problem, prior, 10, chains=100, seed=0, progress=False
    )
    assert result.kind == "mcmc" and result.samples.shape == (100, 10, 8)
    floor = post.metrics.floor(
        post.metrics.sliced_wasserstein, lambda k, s: exact.sample(k, seed=s), 1000, 1000
    )
    assert post.metrics.sliced_wasserstein(result.flat(), exact.sample(1000, seed=999)) < 3 * floor
    assert result.trace["chain_sigma"].shape == (100 + 5 * 10, 100)


def test_digits_inpainting_chains_report_rhat_and_ess():
    """Four chains on the digits prior with the bundled noise-level classifier: to_arviz carries the
    (chain, draw) structure, and R-hat and ESS come out finite for every pixel."""
    pytest.importorskip("sklearn")
    import arviz_stats as azs

    from posterior.data import digits
    from posterior.priors import pretrained

    prior = pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    noise = ops.GaussianNoise(0.05)
    y = noise.sample(operator(digits("test")[11:12]), torch.Generator().manual_seed(0))[0]
    sampler = post.samplers.DenoisingLangevinGibbs(
        classifier="digits", burn_in=10, thin=2, init_steps=10, ode_steps=3
    )
    result = sampler.sample(
        post.InverseProblem(operator, noise, y), prior, 6, chains=4, seed=0, progress=False
    )
    tree = result.to_arviz()
    rhat = azs.rhat(tree, var_names=["x"])["x"].values
    ess = azs.ess(tree, var_names=["x"], method="bulk")["x"].values
    assert rhat.shape == ess.shape == (1, 16, 16)
    assert bool(torch.isfinite(torch.as_tensor(rhat)).all()) and float(torch.as_tensor(ess).min()) > 0


def exact_sigma_marginal(prior, problem, grid):
    """``pi(sigma_g | y) ∝ integral p_sigma_g(x) N(y; A x, sigma_y^2 I + sigma_g^2 A A^T) dx``: a mixture of
    Gaussians ``N(y; A m_k, A (C_k + sigma_g^2 I) A^T + sigma_y^2 I + sigma_g^2 A A^T)``, written out here
    independently of the sampler."""
    A = problem.operator.to_matrix()
    R = float(problem.noise.sigma) ** 2 * torch.eye(A.shape[0], dtype=torch.float64)
    log_z = []
    for s in grid:
        noised = prior.noised(s)
        cov = noised.covariance_matrices()
        log_z.append(
            torch.logsumexp(
                torch.stack(
                    [
                        noised.log_weights[k]
                        + torch.distributions.MultivariateNormal(
                            A @ noised.means[k], A @ cov[k] @ A.T + R + s**2 * A @ A.T
                        ).log_prob(problem.y)
                        for k in range(noised.num_components)
                    ]
                ),
                0,
            )
        )
    return torch.softmax(torch.stack(log_z), 0)


class ResidualConditional(post.samplers.DenoisingLangevinGibbs):
    """Broken: the former ``"residual"`` conditional, ``log N(x; D(x, sigma), sigma^2 I)`` in place of
    ``log p_sigma(x)`` (its ``sigma^-d`` term drags chains to the lowest level)."""

    def mode(self, prior):
        return "residual"

    def sigma_logits(self, problem, prior, surrogate, x, grid):
        n, G = x.shape[0], grid.numel()
        log_lik = surrogate.log_density(problem, x.repeat_interleave(G, 0), grid.repeat(n)).reshape(n, G)
        denoised = torch.stack([prior.denoise(x, s) for s in grid], 1)  # (n, G, d)
        resid = ((x[:, None] - denoised) ** 2).sum(-1)
        return -0.5 * resid / grid**2 - x.shape[1] * torch.log(grid) + log_lik


def argmax_draw(logits, generator):
    return logits.argmax(-1)


def pinned_draw(logits, generator):
    return torch.zeros(logits.shape[0], dtype=torch.long)


@pytest.mark.parametrize(
    "variant, passes",
    [
        ("exact", True),
        ("flow", True),
        ("broken: residual conditional", False),
        ("broken: sigma by argmax", False),
        ("broken: sigma pinned to the lowest level", False),
    ],
)
def test_sigma_marginal_matches_the_exact_one(variant, passes, overlapping_problem, monkeypatch):
    """The chains' sigma-marginal against the exact ``pi(sigma_g | y)`` (:func:`exact_sigma_marginal`), on
    the overlapping mixture with two rows. ``"flow"`` runs on the analytic prior wrapped so that it offers
    only a denoiser (the default for such a prior); ``"exact"`` on the analytic prior itself. 128 chains,
    20 levels, 400 iterations after a burn-in of 300 (the flow move walks one level at a time from the
    lowest), step size 0.05 (at 0.2 the unadjusted x-step biases E[log sigma] by about 0.35). Statistics:
    ``E[log sigma]`` and ``P(sigma = lowest level)``, each chain's time average an independent draw, so the
    standard error is the chains' spread over sqrt(128); the bar is 4 standard errors (plus 0.02 on the
    probability). Measured: exact marginal -2.15 and 0.078; exact -2.03 and 0.075; flow -2.15 and 0.077;
    residual -4.59 and 0.96; argmax -2.74 and 0.53; pinned -4.61 and 1."""
    prior, problem = overlapping_problem(rows=2)
    levels, burn_in, chains = 20, 300, 128
    cls = post.samplers.DenoisingLangevinGibbs
    mode, target = "exact", prior
    if variant == "flow":
        mode = "flow"
        target = post.priors.DiffusionPrior.from_denoiser(
            prior.denoise, (8,), 0.002, 80.0, dtype=torch.float64
        )
    elif variant == "broken: residual conditional":
        cls = ResidualConditional
    elif variant == "broken: sigma by argmax":
        monkeypatch.setattr(post.samplers.dlg, "draw_categorical", argmax_draw)
    elif variant.startswith("broken: sigma pinned"):
        monkeypatch.setattr(post.samplers.dlg, "draw_categorical", pinned_draw)
    sampler = cls(
        levels=levels, burn_in=burn_in, thin=40, step_size=0.05, sigma_posterior=mode, ode_steps=2, start="guided"
    )
    grid = sampler.grid(prior, torch.float64, "cpu")
    p = exact_sigma_marginal(prior, problem, grid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)
        result = sampler.sample(problem, target, 10, chains=chains, seed=0, progress=False)
    sigmas = result.trace["chain_sigma"][burn_in:]  # (iterations, chains)
    lowest = (sigmas <= grid[0] * 1.0001).double().mean(0)
    log_sigma = sigmas.log().mean(0)
    agree = [
        abs(float(log_sigma.mean() - (p * grid.log()).sum()))
        < 4 * float(log_sigma.std()) / chains**0.5 + 1e-9,
        abs(float(lowest.mean() - p[0])) < 4 * float(lowest.std()) / chains**0.5 + 0.02,
    ]
    assert all(agree) == passes, (variant, float(log_sigma.mean()), float(lowest.mean()))


def test_flow_default_and_argument_checks(overlapping_problem):
    """A prior that offers only a denoiser gets the flow move by default (2 NFE per Heun step beyond the
    x-step); the removed ``"residual"`` conditional is refused with the reason."""
    prior, problem = overlapping_problem()
    net_like = post.priors.DiffusionPrior.from_denoiser(prior.denoise, (8,), 0.002, 80.0, dtype=torch.float64)
    sampler = post.samplers.DenoisingLangevinGibbs(
        levels=8, burn_in=3, thin=1, init_steps=5, ode_steps=2, start="guided"
    )
    assert sampler.mode(net_like) == "flow" and sampler.mode(prior) == "exact"
    result = sampler.sample(problem, net_like, 2, chains=2, seed=0, progress=False)
    # 8 levels from 0.01 to 20 are 2.96x apart: 5 Heun steps of at most 1.25x per move, 2 NFE each
    assert result.nfe == 5 + 5 * (1 + 2 * 5) + 2 * (2 * 2 + 1)  # init, 5 iterations, 2 draws
    with pytest.raises(ValueError, match="use 'flow'"):
        post.samplers.DenoisingLangevinGibbs(sigma_posterior="residual")
    with pytest.raises(ValueError, match="classifier"):
        post.samplers.DenoisingLangevinGibbs(sigma_posterior="classifier")
    with pytest.raises(ValueError, match="sigma_low"):
        post.samplers.DenoisingLangevinGibbs(sigma_low=1.0, sigma_high=0.5)


def test_one_measurement_per_chain(overlapping_problem):
    """Two chains given two measurements (y and a copy shifted by 3) follow their own exact posteriors:
    each chain's mean of 60 draws lies within 5 standard errors (ESS taken as 10) of its own exact mean,
    and not within them of the other chain's exact mean nor of the prior mean (a sampler that ignored y, or
    swapped the measurements, fails); one measurement per draw is refused."""
    prior, problem = overlapping_problem(rows=4)
    ys = torch.stack([problem.y, problem.y + 3.0])
    batched = post.InverseProblem(problem.operator, problem.noise, ys)
    result = post.samplers.DenoisingLangevinGibbs(burn_in=50, thin=2).sample(
        batched, prior, 60, chains=2, seed=0, progress=False
    )
    exact = [prior.posterior(post.InverseProblem(problem.operator, problem.noise, y)) for y in ys]

    def within(c, reference):
        se = (exact[c].covariance().diagonal() / 10).sqrt()
        return bool(((result.samples[c].mean(0) - reference).abs() < 5 * se).all())

    for c in range(2):
        assert within(c, exact[c].mean())
        assert not within(c, exact[1 - c].mean()) and not within(c, prior.mean())
    per_draw = post.InverseProblem(problem.operator, problem.noise, ys.repeat(3, 1))
    with pytest.raises(ValueError, match="one per chain"):
        post.samplers.DenoisingLangevinGibbs().sample(per_draw, prior, 3, chains=2, progress=False)


@pytest.mark.filterwarnings("ignore:.*diverged")  # two iterations of a tiny run: only the files matter here
def test_a_classifier_file_changed_since_the_checkpoint_is_refused(tmp_path):
    """The classifier is named by a file: a checkpoint records its weights, so a retrained file at the same
    path is refused on resume, and the file is read again when it changes."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from posterior.priors import pretrained
    from posterior.priors.pretrained import WEIGHTS
    from posterior.samplers.dlg import load_classifier

    source = WEIGHTS / "digits-noise.safetensors"
    with safe_open(str(source), framework="pt") as f:
        metadata = f.metadata()
    path = tmp_path / "classifier.safetensors"
    tensors = load_file(source)
    save_file(tensors, path, metadata=metadata)
    prior = pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    y = torch.zeros(1, 16, 16)
    problem = post.InverseProblem(operator, ops.GaussianNoise(0.1), operator(y[None])[0])
    sampler = post.samplers.DenoisingLangevinGibbs(
        classifier=str(path), burn_in=2, thin=1, init_steps=2, ode_steps=1
    )
    run = dict(chains=1, seed=0, progress=False, checkpoint_every=2)
    sampler.sample(problem, prior, 2, checkpoint=tmp_path / "run.pt", **run)
    first = load_classifier(str(path), "cpu")
    bias = next(name for name in tensors if name.endswith("bias"))
    tensors[bias] = tensors[bias] + 1.0
    save_file(tensors, path, metadata=metadata)
    assert load_classifier(str(path), "cpu") is not first
    with pytest.raises(ValueError, match="its resources differ"):
        sampler.sample(
            problem,
            prior,
            2,
            resume=tmp_path / "run.pt",
            **{k: v for k, v in run.items() if k != "checkpoint_every"},
        )


@pytest.mark.parametrize(
    "variant, passes",
    [("smc", True), ("broken: guided start", False), ("broken: every chain from one particle", False)],
)
def test_smc_start_gives_the_exact_mode_weights(variant, passes, monkeypatch, separated_modes):
    """Separated modes (:func:`separated_problem`, 4 modes with weight above 0.1): chains do not cross
    between them, so their mode weights are their starts'. 200 chains x 2 draws from the SMC start (10
    particles per chain) put the exact fractions on the modes within 4.5 standard errors
    (:func:`mode_weight_z`, 200 groups); the guided start and starts all taken from one particle are
    rejected by the same bar. The population has 200 levels: at 50 (100) AFDPS's
    own discretisation puts 0.05 (0.08) on the 0.11 mode, at 200 0.09-0.10. Measured max z at seed 0:
    smc 1.5, guided 15, one particle 18."""
    separated_problem, mode_weight_z, one_particle = separated_modes
    prior, problem, exact = separated_problem()
    start = "guided" if variant == "broken: guided start" else "smc"
    if variant == "broken: every chain from one particle":
        monkeypatch.setattr(post.samplers.population, "inverse_cdf", one_particle)
    sampler = post.samplers.DenoisingLangevinGibbs(
        burn_in=20, thin=2, ode_steps=4, start=start, start_particles=10, start_steps=200
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)
        result = sampler.sample(problem, prior, 2, chains=200, seed=0, progress=False)
    z = mode_weight_z(result.flat(), exact, 200, 2000)
    assert (z < 4.5) == passes, (variant, z)
    if variant == "smc":  # the start's NFE are the sampler's: 200 levels, 20 + 2 * 2 iterations, 2 draws
        assert result.nfe == 200 + 24 + 2 * (2 * 4 + 1)
