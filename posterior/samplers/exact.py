"""The exact posterior as a sampler: the reference for analytic priors under linear-Gaussian problems.

For a :class:`~posterior.priors.GaussianMixture` (or ``Gaussian``) prior and ``y = A x + noise`` with
Gaussian noise, ``prior.posterior(problem)`` is a Gaussian mixture in closed form; this sampler draws
from it exactly, one problem per chain when ``y`` is batched. It is what every other sampler is
graded against (``benchmarks/gmm.py``, ``posterior.diagnostics.calibrate``). Cost: no NFE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.kernel import Kernel


@dataclass
class ExactPosterior(Sampler):
    """Exact draws from ``prior.posterior(problem)`` (analytic priors, linear-Gaussian problems)."""

    kind = "samples"

    def sample(self, problem, prior, num_samples, *, checkpoint=None, resume=None, **options):
        """:meth:`Sampler.sample` without ``checkpoint`` and ``resume``: the draws take no steps."""
        if checkpoint is not None or resume is not None:
            raise ValueError("ExactPosterior draws in one step: there is nothing to checkpoint or resume")
        return super().sample(problem, prior, num_samples, **options)

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        if not prior.has_posterior:
            raise ValueError("ExactPosterior needs an analytic prior (GaussianMixture or Gaussian)")
        problem = one_y_per_chain(problem, chains, num_samples, "ExactPosterior")
        return ExactKernel(self, problem, prior, chains, num_samples)

    def draw(self, exact, n: int, generator):
        """``n`` draws from one exact posterior (a hook for deliberately wrong variants in tests)."""
        return exact.sample(n, seed=generator)


@dataclass(frozen=True)
class ExactState:
    """Nothing: the draws are made at the end, in one go."""


@dataclass
class ExactKernel(Kernel):
    """Exact draws for one problem (``y`` one per chain when batched); no steps."""

    settings: ExactPosterior
    problem: InverseProblem
    prior: object
    chains: int
    num_samples: int

    State = ExactState
    steps = 0

    def init(self, generator):
        return ExactState()

    def finish(self, state, generator):
        problem, prior, draw = self.problem, self.prior, self.settings.draw
        if not problem.batched:
            return draw(prior.posterior(problem), self.chains * self.num_samples, generator), {}
        problems = [InverseProblem(problem.operator, problem.noise, y) for y in problem.y]
        return torch.cat([draw(prior.posterior(p), self.num_samples, generator) for p in problems]), {}
