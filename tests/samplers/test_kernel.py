"""The kernel interface: the new-sampler example of docs/conventions.md runs, checkpoints and resumes
bit for bit through the driver; a step's ``Divergence`` stops the run with the last good state saved."""

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture
from posterior.samplers.kernel import Divergence, Info, Kernel

DOC = Path(__file__).parents[2] / "docs" / "conventions.md"


def example() -> dict:
    """The namespace of the code block after ``<!-- example: kernel -->`` in docs/conventions.md."""
    block = re.search(r"<!-- example: kernel -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    namespace = {"__name__": "conventions_example"}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    return namespace


def problem():
    prior = GaussianMixture.grid(2, seed=0).to(dtype=torch.float64)
    A = ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    return prior, post.InverseProblem(A, ops.GaussianNoise(3.0), torch.tensor([0.7], dtype=torch.float64))


def test_the_documented_kernel_samples_checkpoints_and_resumes(tmp_path):
    GuidedAncestral = example()["GuidedAncestral"]
    prior, inverse = problem()
    sampler = GuidedAncestral(steps=10)
    steps = []
    whole = sampler.sample(
        inverse, prior, 8, chains=2, seed=1, progress=False, callback=lambda k, s: steps.append(k)
    )
    assert whole.samples.shape == (2, 8, 2) and whole.nfe == 10 and whole.grad_evals == 10
    assert steps == list(range(10)) and whole.kind == "approximate"
    path = tmp_path / "run.pt"
    sampler.sample(inverse, prior, 8, chains=2, seed=1, progress=False, checkpoint=path, checkpoint_every=4)
    resumed = sampler.sample(inverse, prior, 8, chains=2, seed=1, progress=False, resume=path)
    assert torch.equal(resumed.samples, whole.samples) and resumed.nfe == whole.nfe
    # the comparison can fail: without its likelihood score the kernel gives other draws
    unguided = GuidedAncestral(steps=10, zeta=0.0).sample(inverse, prior, 8, chains=2, seed=1, progress=False)
    assert not torch.equal(unguided.samples, whole.samples)


@dataclass(frozen=True)
class CountState:
    x: torch.Tensor


class BreaksAtThree(Kernel):
    """A kernel whose fourth step finds its run broken."""

    State = CountState
    steps = 6

    def __init__(self, n, shape, dtype):
        self.n, self.shape, self.dtype = n, shape, dtype

    def init(self, generator):
        return CountState(torch.zeros(self.n, *self.shape, dtype=self.dtype))

    def step(self, state, k, generator):
        if k == 3:
            raise Divergence(0.5, "every particle of a run has zero weight", "use more particles")
        return CountState(state.x + 1), Info(1.0, check=(state.x + 1,))

    def finish(self, state, generator):
        return state.x, {}


@dataclass
class Broken(post.samplers.Sampler):
    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        return BreaksAtThree(chains * num_samples, prior.event_shape, problem.y.dtype)


def test_a_divergence_stops_the_run_with_the_last_good_state(tmp_path):
    prior, inverse = problem()
    path = tmp_path / "last.pt"
    with pytest.raises(
        FloatingPointError, match=r"Broken: every particle .* at step 3 \(sigma=0.5\); use more particles"
    ):
        Broken().sample(inverse, prior, 2, seed=0, progress=False, checkpoint=path, checkpoint_every=100)
    saved = post.samplers.loop.read_checkpoint(path)
    assert saved["step"] == 3 and torch.equal(
        saved["state"]["x"], torch.full((2, 2), 3.0, dtype=torch.float64)
    )


def test_exact_draws_follow_one_measurement_per_draw():
    """A batched ``y`` with one measurement per draw gets each draw from its own exact posterior; with
    one per chain, each chain's draws share theirs (the earlier code used each chain's first ``y`` for
    all its draws, which this rejects)."""
    prior, inverse = problem()
    ys = torch.tensor([[-30.0], [30.0], [-30.0], [30.0]], dtype=torch.float64)
    per_draw = post.InverseProblem(inverse.operator, inverse.noise, ys)
    draws = post.samplers.ExactPosterior().sample(per_draw, prior, 2, chains=2, seed=0, progress=False).flat()
    means = torch.stack(
        [prior.posterior(post.InverseProblem(inverse.operator, inverse.noise, y)).mean() for y in ys]
    )
    # each draw lies on the side of its own measurement: A x has the sign of y
    assert torch.equal(torch.sign(inverse.operator(draws)), torch.sign(ys)) and torch.equal(
        torch.sign(means @ torch.tensor([0.6, 0.8], dtype=torch.float64))[:, None], torch.sign(ys)
    )
    with pytest.raises(ValueError, match="nothing to checkpoint or resume"):
        post.samplers.ExactPosterior().sample(per_draw, prior, 2, chains=2, checkpoint="unused.pt")


def test_a_prior_with_its_own_log_prob_has_the_capability():
    """A user's prior subclass that defines ``log_prob`` or ``posterior`` is seen as having them, unless it
    says otherwise; the base class has neither."""

    class WithDensity(post.priors.DiffusionPrior):
        def log_prob(self, x, sigma=0.0):
            return x.sum(1)

    class Declines(WithDensity):
        has_log_prob = False

        def log_prob(self, x, sigma=0.0):
            return x.sum(1)

    assert WithDensity.has_log_prob and not WithDensity.has_posterior
    assert not Declines.has_log_prob and not post.priors.DiffusionPrior.has_log_prob
