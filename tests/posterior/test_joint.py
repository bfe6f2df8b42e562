"""Joint posterior of independent sources: stacked and patched priors, the haze link, and the joint
sampler against the exact joint posterior of two summed Gaussian mixtures."""

import pytest
import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.priors import Gaussian, GaussianMixture, PatchedPrior, StackedPrior, SubspacePrior
from posterior.priors.composite import patch_starts


def summed_mixtures():
    """x ~ 3-mode and h ~ 2-mode mixtures in 2-D (std 0.5), y = x + h + N(0, 0.3^2): the stacked prior,
    the joint prior as one 6-mode mixture on the stack, and the problem."""
    px = GaussianMixture.random(2, num_components=3, separation=3.0, std=0.5, seed=0, event_shape=(1, 2))
    ph = GaussianMixture.random(2, num_components=2, separation=3.0, std=0.5, seed=1, event_shape=(1, 2))
    pairs = [(i, j) for i in range(3) for j in range(2)]
    means = torch.stack([torch.cat([px.means[i], ph.means[j]]) for i, j in pairs])  # (6, 2, 2)
    weights = torch.stack([px.weights[i] * ph.weights[j] for i, j in pairs])
    joint = GaussianMixture(means, weights, torch.full((6,), 0.25, dtype=torch.float64))
    A = ops.Matrix(torch.cat([torch.eye(2), torch.eye(2)], 1).double(), in_shape=(2, 2))
    noise = ops.GaussianNoise(0.3)
    y = noise.sample(A(joint.sample(1, seed=7)), torch.Generator().manual_seed(3))[0]
    return StackedPrior([px, ph]), joint, post.InverseProblem(A, noise, y)


def test_stacked_prior_is_the_product_of_its_sources():
    stacked, joint, _ = summed_mixtures()
    x = torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.1, 1.0, 10.0):
        torch.testing.assert_close(stacked.denoise(x, sigma), joint.denoise(x, sigma))
        torch.testing.assert_close(stacked.log_prob(x, sigma), joint.log_prob(x, sigma))
    tissue, haze = stacked.split(x)
    assert tissue.shape == haze.shape == (5, 1, 2) and stacked.sample(4, seed=0).shape == (4, 2, 2)
    with pytest.raises(ValueError, match="event shapes"):
        StackedPrior([Gaussian(torch.zeros(1, 2), 1.0), Gaussian(torch.zeros(1, 3), 1.0)])


@pytest.mark.parametrize("guidance", ["pigdm", "dps"])
def test_joint_sampler_matches_the_exact_joint_posterior(guidance):
    """2000 draws, 100 steps, step size 1. Measured sliced-Wasserstein / exact-vs-exact floor: joint
    3.7 (pigdm) and 3.8 (dps); each source's marginal 2.9-3.5. Bound: 6 (1.6x the measured worst).
    The projection variant (no network Jacobian) lands at 36x and is only checked to run."""
    stacked, joint, problem = summed_mixtures()
    exact = joint.posterior(problem)
    n = 2000
    result = post.samplers.JointPosterior(steps=100, guidance=guidance).sample(
        problem, stacked, n, seed=0, progress=False
    )
    draws, ref = result.samples[0], exact.sample(n, seed=11)

    def sw(a, b):
        return metrics.sliced_wasserstein(a, b)

    def sampler(m, s):
        return exact.sample(m, seed=s)

    assert sw(draws, ref) < 6 * metrics.floor(sw, sampler, n, n)
    for k in range(2):  # tissue-like and haze-like source marginals

        def marginal(a, b, k=k):
            return metrics.sliced_wasserstein(a[:, k], b[:, k])

        assert marginal(draws, ref) < 6 * metrics.floor(marginal, sampler, n, n)
    assert result.nfe == 100 and result.grad_evals == 100


def test_projection_guidance_late_start_and_checks():
    stacked, _, problem = summed_mixtures()
    link = ops.Function(lambda z: z[:, :1] + z[:, 1:], in_shape=(2, 2))
    nonlinear = post.InverseProblem(link, problem.noise, problem.y.reshape(1, 2))
    result = post.samplers.JointPosterior(
        steps=20, guidance="projection", sigma_start=2.0, step_size=(1.0, 0.5)
    ).sample(nonlinear, stacked, 8, seed=0, progress=False)
    assert result.grad_evals == 0 and float(result.trace["sigma"][0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="step_size has 3 entries"):
        post.samplers.JointPosterior(steps=5, step_size=(1.0, 1.0, 1.0)).sample(
            problem, stacked, 2, progress=False
        )
    with pytest.raises(ValueError, match="late start"):
        post.samplers.JointPosterior(steps=5, sigma_start=1.0).sample(problem, stacked, 2, progress=False)
    with pytest.raises(ValueError, match="guidance"):
        post.samplers.JointPosterior(guidance="bogus")


def test_patched_prior_equals_the_frame_denoiser_for_a_pixelwise_prior():
    """An i.i.d. Gaussian prior denoises pixel by pixel, so blending patches must reproduce it exactly."""
    patch = Gaussian(torch.full((1, 8, 8), 0.3, dtype=torch.float64), 0.49)
    frame = Gaussian(torch.full((1, 20, 29), 0.3, dtype=torch.float64), 0.49)
    patched = PatchedPrior(patch, (20, 29), overlap=3, max_batch=7)
    x = torch.randn(2, 1, 20, 29, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(patched.denoise(x, 0.5), frame.denoise(x, 0.5))
    starts = patch_starts(29, 8, 3)
    assert (
        starts[0] == 0
        and starts[-1] == 21
        and all(b - a <= 5 for a, b in zip(starts, starts[1:], strict=False))
    )
    with pytest.raises(ValueError, match="larger than the frame"):
        PatchedPrior(patch, (6, 29))


def test_subspace_prior_is_the_exact_lifted_prior():
    """x = A s with s ~ a 3-mode mixture in (1, 2, 3) and A an isometry onto (1, 2, 8): the lifted
    denoiser equals the closed-form posterior mean of the degenerate mixture sum_k w_k N(A m_k, s_k^2 A A^T)."""
    g = torch.Generator().manual_seed(0)
    centres = 2 * torch.randn(3, 1, 2, 3, generator=g, dtype=torch.float64)
    weights, variances = torch.tensor([0.5, 0.3, 0.2]).double(), torch.tensor([0.1, 0.3, 0.2]).double()
    small = GaussianMixture(centres, weights, variances)
    lift = ops.BandlimitedUpsample((1, 2, 3), 8)
    prior = SubspacePrior(small, lift)
    U = lift.to_matrix()  # (16, 6), U^T U = I
    x = torch.randn(4, 1, 2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sigma in (0.05, 0.7, 5.0):
        means = centres.reshape(3, -1) @ U.T  # (3, 16)
        covs = [variances[k] * U @ U.T + sigma**2 * torch.eye(16, dtype=torch.float64) for k in range(3)]
        flat = x.reshape(4, -1)
        log_w = torch.stack(
            [
                weights[k].log() + torch.distributions.MultivariateNormal(means[k], covs[k]).log_prob(flat)
                for k in range(3)
            ],
            1,
        )
        posts = torch.stack(
            [
                means[k] + (flat - means[k]) @ torch.linalg.solve(covs[k], variances[k] * U @ U.T)
                for k in range(3)
            ],
            1,
        )
        exact = (log_w.softmax(1)[..., None] * posts).sum(1).reshape(x.shape)
        torch.testing.assert_close(prior.denoise(x, sigma), exact)
    assert prior.event_shape == (1, 2, 8)
    with pytest.raises(ValueError, match="isometry"):
        SubspacePrior(
            small, ops.Matrix(2 * torch.eye(6, dtype=torch.float64), in_shape=(1, 2, 3), out_shape=(1, 2, 3))
        )
    with pytest.raises(ValueError, match="in_shape"):
        SubspacePrior(small, ops.BandlimitedUpsample((1, 2, 4), 8))


def test_haze_link():
    link = ops.HazeLink((1, 4, 4), gamma=2.0)
    z = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(link(z), ops.ultrasound.compose(z[:, :1], z[:, 1:], 2.0, clip=False))
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(link(3 * z).sum(), z)
    assert bool(torch.isfinite(grad).all()) and bool((grad[(3 * z).abs() > 1] == 0).all())
    assert link.in_shape == (2, 4, 4) and link.out_shape == (1, 4, 4)
