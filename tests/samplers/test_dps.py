import pyro
import pyro.distributions as dist
import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture

SHAPE = (1, 8, 8)


def image_prior():
    """A small image-shaped mixture: 3 components with diagonal covariances, values around [0, 1]."""
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, *SHAPE, generator=g, dtype=torch.float64)
    covariances = 0.01 + 0.02 * torch.rand(3, 64, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), covariances)


def mask():
    m = torch.ones(SHAPE, dtype=torch.bool)
    m[:, 2:6, 2:6] = False
    return m


def pyro_poisson_model(z):
    return pyro.sample("y", dist.Poisson(10 * torch.exp(z)).to_event(3))


OPERATOR_NOISE = {
    "identity-gaussian": lambda: (ops.Identity(SHAPE), ops.GaussianNoise(0.1)),
    "inpainting-gaussian": lambda: (ops.Inpainting(mask()), ops.GaussianNoise(0.05)),
    "blur-laplace": lambda: (ops.Blur.gaussian(SHAPE, std=1.0), ops.LaplaceNoise(0.05)),
    "downsample-studentt": lambda: (ops.Downsample(SHAPE, 2), ops.StudentTNoise(df=4.0, scale=0.05)),
    "mri-gaussian": lambda: (
        ops.MRI(ops.MRI.cartesian_mask((8, 8), acceleration=2, center_fraction=0.25, seed=0)),
        ops.GaussianNoise(0.05),
    ),
    "radon-poisson": lambda: (ops.Radon(torch.linspace(0, 180, 6)[:-1], 8), ops.PoissonNoise(gain=20.0)),
    "phase-retrieval-gaussian": lambda: (ops.PhaseRetrieval(SHAPE), ops.GaussianNoise(0.05)),
    "matrix-gaussian": lambda: (
        ops.Matrix(torch.randn(10, 64, dtype=torch.float64), in_shape=SHAPE),
        ops.GaussianNoise(0.1),
    ),
    "pyro-poisson": lambda: (ops.Identity(SHAPE), ops.PyroLikelihood(pyro_poisson_model)),
}


@pytest.mark.parametrize("name", list(OPERATOR_NOISE))
@pytest.mark.parametrize("guidance", ["residual", "likelihood"])
def test_dps_runs_on_every_operator_and_noise_model(name, guidance):
    prior = image_prior()
    operator, noise = OPERATOR_NOISE[name]()
    x_true = prior.sample(1, seed=1)
    y = noise.sample(operator(x_true), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(operator, noise, y)
    step_size = 0.5 if guidance == "residual" else 1.0
    result = post.samplers.DPS(steps=20, step_size=step_size, guidance=guidance).sample(
        problem, prior, num_samples=4, chains=2, seed=0, progress=False
    )
    assert result.samples.shape == (2, 4, *SHAPE)
    assert bool(torch.isfinite(result.samples).all())
    assert (result.nfe, result.grad_evals) == (20, 20)
    assert result.kind == "approximate" and result.sampler == "DPS"
    flat_ll = problem.log_likelihood(result.flat())
    torch.testing.assert_close(result.sample_stats["log_likelihood"].reshape(-1), flat_ll)


def test_dps_is_seeded_and_calls_back():
    prior = image_prior()
    problem = post.InverseProblem(
        ops.Inpainting(mask()), ops.GaussianNoise(0.05), prior.sample(1, seed=1)[0] * mask()
    )
    steps = []
    sampler = post.samplers.DPS(steps=10)
    a = sampler.sample(problem, prior, 3, seed=7, progress=False, callback=lambda i, s: steps.append(i))
    b = sampler.sample(problem, prior, 3, seed=7, progress=False)
    torch.testing.assert_close(a.samples, b.samples)
    assert steps == list(range(10))


def test_dps_moves_toward_the_exact_posterior():
    """Coarse quality: on a separated 2-D mixture with a 1-row operator, DPS's mean (paper's residual
    step) is much closer to the exact posterior mean than the prior mean is (measured 0.9 against 7.4;
    DPS is biased, so no floor-level claim here)."""
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    problem = post.InverseProblem(A, ops.GaussianNoise(0.5), torch.tensor([6.0], dtype=torch.float64))
    exact = prior.posterior(problem)
    result = post.samplers.DPS(steps=100).sample(problem, prior, 500, seed=0, progress=False)
    err_dps = float((result.mean() - exact.mean()).norm())
    err_prior = float((prior.mean() - exact.mean()).norm())
    assert err_dps < 0.5 * err_prior
    # every DPS sample explains the measurement about as well as exact samples do
    residual = (problem.operator(result.flat()) - problem.y).abs().mean()
    assert float(residual) < 3 * 0.5


def test_dps_errors():
    prior = image_prior()
    problem = post.InverseProblem(
        ops.Identity((2,)), ops.GaussianNoise(0.1), torch.zeros(2, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match=r"operator.in_shape \(2,\) does not match prior.event_shape"):
        post.samplers.DPS(steps=5).sample(problem, prior, 2, progress=False)
    with pytest.raises(ValueError, match="guidance must be"):
        post.samplers.DPS(guidance="tweedie")
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        post.samplers.DPS(steps=5).sample(problem, prior, 0, progress=False)


def test_dps_likelihood_step_overshoots_at_unit_scale():
    """Documented behaviour, not a virtue: the unscaled likelihood step (zeta = 1) overshoots when the
    prior variance along A^T is large against sigma_y^2 (measured 40x the floor here, mean far off),
    while zeta = 0.1 with 1000 steps lands near the exact mean. Guards the docstring's claim."""
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    problem = post.InverseProblem(A, ops.GaussianNoise(0.5), torch.tensor([6.0], dtype=torch.float64))
    exact_mean = prior.posterior(problem).mean()
    unit = post.samplers.DPS(steps=100, guidance="likelihood").sample(
        problem, prior, 300, seed=0, progress=False
    )
    small = post.samplers.DPS(steps=1000, guidance="likelihood", step_size=0.1).sample(
        problem, prior, 300, seed=0, progress=False
    )
    assert float((unit.mean() - exact_mean).norm()) > 5
    assert float((small.mean() - exact_mean).norm()) < 2


def test_dps_stops_on_nan(tmp_path):
    prior = image_prior()
    problem = post.InverseProblem(
        ops.Identity(SHAPE), ops.GaussianNoise(1e-6), torch.zeros(SHAPE, dtype=torch.float64)
    )
    with pytest.raises(FloatingPointError, match=r"DPS: .*non-finite values at step \d+ \(sigma="):
        post.samplers.DPS(steps=10, guidance="likelihood", step_size=1e30).sample(
            problem, prior, 2, progress=False, checkpoint=tmp_path / "last.pt"
        )


def test_lml_corrector_adds_one_nfe_per_step_and_stays_finite():
    prior = image_prior()
    operator, noise = OPERATOR_NOISE["inpainting-gaussian"]()
    y = noise.sample(operator(prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
    problem = post.InverseProblem(operator, noise, y)
    plain = post.samplers.DPS(steps=10).sample(problem, prior, 4, seed=0, progress=False)
    corrected = post.samplers.DPS(steps=10, corrector_steps=2).sample(
        problem, prior, 4, seed=0, progress=False
    )
    assert corrected.nfe == plain.nfe + 2 * 9  # none after the last step, to sigma = 0
    assert bool(torch.isfinite(corrected.samples).all())
    assert not torch.allclose(corrected.samples, plain.samples)
    with pytest.raises(ValueError, match="corrector"):
        post.samplers.DPS(corrector_steps=-1)
