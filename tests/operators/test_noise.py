import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import operators as ops

NOISES = [
    lambda: ops.GaussianNoise(0.3),
    lambda: ops.GaussianNoise(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)),
    lambda: ops.PoissonNoise(gain=5.0),
    lambda: ops.LaplaceNoise(0.5),
    lambda: ops.StudentTNoise(df=3.0, scale=0.4),
]


@pytest.mark.parametrize("make", NOISES)
def test_log_prob_gradcheck_and_shape(make):
    noise = make()
    Ax = (torch.rand(3, 4, dtype=torch.float64) + 0.5).requires_grad_(True)
    y = noise.sample(Ax.detach(), torch.Generator().manual_seed(0))
    assert y.shape == (3, 4)
    assert noise.log_prob(y, Ax).shape == (3,)
    assert torch.autograd.gradcheck(lambda a: noise.log_prob(y, a), (Ax,))
    # a single y broadcasts over the batch
    torch.testing.assert_close(noise.log_prob(y[0], Ax), noise.log_prob(y[0].expand(3, 4), Ax))


def test_gaussian_log_prob_matches_formula():
    noise = ops.GaussianNoise(0.5)
    y, Ax = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 2.5]])
    ref = -0.5 * ((1 / 0.5) ** 2 + (0.5 / 0.5) ** 2) - 2 * math.log(0.5) - math.log(2 * math.pi)
    assert float(noise.log_prob(y, Ax)) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("make", NOISES)
def test_sample_is_seeded(make):
    noise = make()
    Ax = torch.rand(5, 4, dtype=torch.float64) + 0.5
    a = noise.sample(Ax, torch.Generator().manual_seed(3))
    b = noise.sample(Ax, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_sample_moments_gaussian_and_laplace():
    # mean of 20000 draws has standard error s / sqrt(20000); allow 5 standard errors.
    Ax = torch.full((20000, 1), 2.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    for noise, std in [(ops.GaussianNoise(0.3), 0.3), (ops.LaplaceNoise(0.5), 0.5 * math.sqrt(2))]:
        y = noise.sample(Ax, g)
        assert abs(float(y.mean()) - 2.0) < 5 * std / math.sqrt(20000)
        assert abs(float(y.std()) - std) < 5 * std / math.sqrt(2 * 20000) * 2


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ops.GaussianNoise(0.0), "sigma must be finite and > 0"),
        (lambda: ops.GaussianNoise(-1.0), "sigma must be finite and > 0"),
        (lambda: ops.GaussianNoise(float("nan")), "sigma must be finite and > 0"),
        (lambda: ops.GaussianNoise(torch.tensor([0.1, 0.0])), "sigma must be finite and > 0"),
        (lambda: ops.PoissonNoise(gain=0.0), "gain must be finite and > 0"),
        (lambda: ops.LaplaceNoise(-2.0), "b must be finite and > 0"),
        (lambda: ops.StudentTNoise(df=0.0), "df must be finite and > 0"),
    ],
)
def test_bad_noise_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pyro_gaussian_equals_gaussian_noise():
    y = torch.randn(4, dtype=torch.float64)

    def model(z):
        return pyro.sample("y", dist.Normal(z, 0.3).to_event(1), obs=y)

    z = torch.randn(6, 4, dtype=torch.float64)
    ref = ops.GaussianNoise(0.3).log_prob(y, z)
    got = ops.PyroLikelihood(model).log_prob(y, z)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_pyro_conditioning_overrides_obs_and_gradcheck_poisson():
    def model(z):  # nonlinear, non-Gaussian: Poisson counts with rate exp(z); obs left out on purpose
        return pyro.sample("y", dist.Poisson(torch.exp(z)).to_event(1))

    lik = ops.PyroLikelihood(model)
    z = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = lik.sample(z.detach(), torch.Generator().manual_seed(0))
    assert y.shape == (3, 5) and bool((y >= 0).all())
    ref = torch.distributions.Poisson(torch.exp(z)).log_prob(y[0]).sum(-1)
    torch.testing.assert_close(lik.log_prob(y[0], z), ref)
    assert torch.autograd.gradcheck(lambda a: lik.log_prob(y[0], a), (z,))


def test_pyro_rejects_latent_sites_and_unbatched_models():
    def latent(z):
        s = pyro.sample("s", dist.HalfNormal(1.0))
        return pyro.sample("y", dist.Normal(z, s).to_event(1))

    with pytest.raises(ValueError, match="latent sample sites"):
        ops.PyroLikelihood(latent).log_prob(torch.zeros(2), torch.zeros(3, 2))

    def unbatched(z):  # folds the batch dimension into the event
        return pyro.sample("y", dist.Normal(z, 1.0).to_event(2))

    with pytest.raises(ValueError, match="broadcast over the batch"):
        ops.PyroLikelihood(unbatched).log_prob(torch.zeros(2), torch.zeros(3, 2))

    with pytest.raises(ValueError, match="no sample site named"):
        ops.PyroLikelihood(lambda z: z, site="y").log_prob(torch.zeros(2), torch.zeros(3, 2))
