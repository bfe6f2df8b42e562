"""Joint posterior of independent sources: stacked and patched priors, the haze link, and the joint
sampler against the exact joint posterior of two summed Gaussian mixtures."""

import functools
import math
import runpy
from pathlib import Path

import pytest
import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.priors import Gaussian, GaussianMixture, PatchedPrior, StackedPrior, SubspacePrior
from posterior.priors.composite import patch_starts


def summed_mixtures():
    """x ~ 3-mode and h ~ 2-mode mixtures in 2-D (std 0.5), y = x + h + N(0, 0.3^2): the stacked prior,
    the joint prior as one 6-mode mixture on the stack, and the problem; one definition, in
    ``benchmarks/joint_toy.py``, for the benchmark and these tests."""
    return runpy.run_path(str(Path(__file__).parents[2] / "benchmarks" / "joint_toy.py"))["summed_mixtures"]()


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


JOINT_VARIANTS = {
    "pigdm": lambda: post.samplers.JointPosterior(steps=100),
    "dps": lambda: post.samplers.JointPosterior(steps=100, guidance="dps"),
    "exact": post.samplers.ExactPosterior,
    # deliberately broken: guided on one source only (the other follows its prior)
    "guided-on-tissue-only": lambda: post.samplers.JointPosterior(steps=100, step_size=(1.0, 0.0)),
    "guided-on-haze-only": lambda: post.samplers.JointPosterior(steps=100, step_size=(0.0, 1.0)),
}


def source_metric(k):
    """Sliced Wasserstein between the marginals of source ``k`` (``None``: the joint law)."""
    if k is None:
        return metrics.sliced_wasserstein
    return lambda a, b: metrics.sliced_wasserstein(a[:, k], b[:, k])


@functools.cache
def joint_floors(n=2000):
    """The exact-vs-exact floors of :func:`source_metric` for the joint law and both sources (seeded, so
    computed once per session: they are the same for every variant)."""
    stacked, joint, problem = summed_mixtures()
    exact = joint.posterior(problem)
    return [metrics.floor(source_metric(k), lambda m, s: exact.sample(m, seed=s), n, n) for k in (None, 0, 1)]


def joint_check(sampler, stacked, joint, problem):
    """The accuracy check of :func:`test_joint_sampler_matches_the_exact_joint_posterior` on 2000 draws:
    ``(passed, SW / floor for (joint, tissue, haze), observed-variance ratio range, result)``."""
    exact = joint.posterior(problem)
    n = 2000
    prior = joint if isinstance(sampler, post.samplers.ExactPosterior) else stacked  # the same law
    result = sampler.sample(problem, prior, n, seed=0, progress=False)
    draws, ref = result.samples[0], exact.sample(n, seed=11)
    ratios = [source_metric(k)(draws, ref) / f for k, f in zip((None, 0, 1), joint_floors(n), strict=True)]
    # along the measured sum x + h (the row space of A): the draws' variance over the exact one
    A = problem.operator.to_matrix().reshape(2, -1)
    V = torch.linalg.svd(A, full_matrices=False)[2]
    observed = draws.reshape(n, -1) @ V.T
    var_ratio = observed.var(0) / (V @ exact.covariance() @ V.T).diagonal()
    low, high = float(var_ratio.min()), float(var_ratio.max())
    passed = max(ratios) < 6 and 0.3 < low and high < 2.0
    return passed, ratios, (low, high), result


@pytest.mark.parametrize("name", ["pigdm", "dps", "exact"])
def test_joint_sampler_matches_the_exact_joint_posterior(name):
    """2000 draws, 100 steps, step size 1, against the exact joint posterior. (a) Sliced Wasserstein over
    its exact-vs-exact floor, for the joint law and each source's marginal: measured (joint, tissue,
    haze) 3.7, 3.5, 3.6 (pigdm), 3.8, 3.2, 4.0 (dps), 1.4, 1.1, 1.7 (exact draws). Bound: 6 (1.5x the
    measured worst). (b) The variance along the measured sum ``x + h`` over the exact one: measured
    0.56-0.64 (pigdm), 0.42-0.47 (dps), 1.00-1.03 (exact; Monte-Carlo standard error 0.03 at
    n = 2000). The sampler is not calibrated: it is over-confident along the data (its guidance
    sharpens the sum beyond the posterior), so the bar is asymmetric, (0.3, 2.0): it admits that
    measured bias and rejects the posterior with sigma_y doubled (2.85-3.07). Broken variants that
    fail the same check: :func:`test_broken_joint_variants_fail_the_joint_check`. The projection
    variant (no network Jacobian) lands at 36x and is only checked to run."""
    stacked, joint, problem = summed_mixtures()
    passed, ratios, var_ratio, result = joint_check(JOINT_VARIANTS[name](), stacked, joint, problem)
    assert passed, (name, ratios, var_ratio)
    if name != "exact":
        assert result.nfe == 100 and result.grad_evals == 100


@pytest.mark.parametrize("name", ["guided-on-tissue-only", "guided-on-haze-only", "exact-sigma-y-doubled"])
def test_broken_joint_variants_fail_the_joint_check(name, noise_doubled_exact):
    """The check of :func:`test_joint_sampler_matches_the_exact_joint_posterior` can fail: the joint
    sampler guided on one source only (the other source's step size 0) and exact draws from the posterior
    with sigma_y doubled. Measured SW ratios (joint, tissue, haze) / observed-variance ratios, against 6
    and (0.3, 2.0): tissue only 21.4, 16.9, 26.0 / 1.69-1.95; haze only 179, 190, 165 / 4.7-10.0;
    sigma_y doubled 4.9, 2.4, 6.0 / 2.85-3.07 (the variance rejects it; SW alone barely does)."""
    stacked, joint, problem = summed_mixtures()
    sampler = noise_doubled_exact if name == "exact-sigma-y-doubled" else JOINT_VARIANTS[name]()
    passed, ratios, var_ratio, _ = joint_check(sampler, stacked, joint, problem)
    assert not passed, (name, ratios, var_ratio)


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
    """``HazeLink`` against the mu-law formulas written out here (mu = 255): ``C^-1(c) = sign(c)
    (256^|c| - 1) / 255``, ``C(u) = sign(u) ln(1 + 255 |u|) / ln 256``, the link ``C(C^-1(x) + gamma
    C^-1(h))`` on sources clipped to [-1, 1]; a hand-computed value, ``x = h = 1/2``, ``gamma = 2``:
    ``C^-1(1/2) = 15/255 = 1/17``, so the link is ``C(3/17) = ln 46 / ln 256``; and the derivative
    ``d link / dx = 256^|x| / (1 + 255 |u|)``, ``d link / dh = gamma 256^|h| / (1 + 255 |u|)`` (``u``
    the linear sum), 0 where a source is clipped."""
    gamma = 2.0
    link = ops.HazeLink((1, 4, 4), gamma=gamma)
    z = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 - 1.5
    x, h = z[:, :1].clamp(-1, 1), z[:, 1:].clamp(-1, 1)

    def expand(c):
        return torch.sign(c) * (256.0 ** c.abs() - 1) / 255

    u = expand(x) + gamma * expand(h)
    expected = torch.sign(u) * torch.log(1 + 255 * u.abs()) / math.log(256)
    torch.testing.assert_close(link(z), expected, rtol=1e-12, atol=1e-12)
    half = torch.full((1, 2, 4, 4), 0.5, dtype=torch.float64)
    torch.testing.assert_close(
        link(half), torch.full((1, 1, 4, 4), math.log(46) / math.log(256), dtype=torch.float64)
    )
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(link(z).sum(), z)
    inside = z.detach().abs() < 1
    denominator = (1 + 255 * u.abs()).repeat(1, 2, 1, 1)
    slope = torch.cat([256.0 ** x.abs(), gamma * 256.0 ** h.abs()], 1) / denominator
    torch.testing.assert_close(grad[inside], slope[inside], rtol=1e-10, atol=1e-12)
    assert bool((grad[~inside] == 0).all()) and bool((~inside).any()) and bool(inside.any())
    assert link.in_shape == (2, 4, 4) and link.out_shape == (1, 4, 4)
