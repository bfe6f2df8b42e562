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
from posterior.samplers.base import Sampler


@dataclass
class ExactPosterior(Sampler):
    """Exact draws from ``prior.posterior(problem)`` (analytic priors, linear-Gaussian problems)."""

    kind = "samples"

    def run(self, problem, prior, chains, num_samples, generator, loop):
        if loop.checkpoint is not None or loop.resume_from is not None:
            raise ValueError("ExactPosterior draws in one step: there is nothing to checkpoint or resume")
        if not hasattr(prior, "posterior"):
            raise ValueError("ExactPosterior needs an analytic prior (GaussianMixture or Gaussian)")
        if not problem.batched:
            return prior.posterior(problem).sample(chains * num_samples, seed=generator), {}
        ys = problem.y.reshape(chains, num_samples, *problem.operator.out_shape)[:, 0]
        draws = [
            self.draw(
                prior.posterior(InverseProblem(problem.operator, problem.noise, y)), num_samples, generator
            )
            for y in ys
        ]
        return torch.cat(draws), {}

    def draw(self, exact, n: int, generator):
        """``n`` draws from one exact posterior (a hook for deliberately wrong variants in tests)."""
        return exact.sample(n, seed=generator)
