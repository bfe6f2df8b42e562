"""The exact posterior as a sampler: the reference for analytic priors under linear-Gaussian problems.

For a :class:`~posterior.priors.GaussianMixture` (or ``Gaussian``) prior and ``y = A x + noise`` with
Gaussian noise, ``prior.posterior(problem)`` is a Gaussian mixture in closed form; this sampler draws
from it exactly, one problem per chain (or per draw) when ``y`` is batched. It draws in one step, so there
is nothing to checkpoint or resume. It is what every other sampler is
graded against (``benchmarks/gmm.py``, ``posterior.diagnostics.calibrate``). Cost: no NFE. Like the
particle samplers it records each chain's ``log p(y)`` (here exact) in ``trace["log_evidence"]``, unless
``y`` is batched one per draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler
from posterior.samplers.kernel import Info, Kernel


@dataclass
class ExactPosterior(Sampler):
    """Exact draws from ``prior.posterior(problem)`` (analytic priors, linear-Gaussian problems)."""

    kind = "samples"

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        if not prior.has_posterior:
            raise ValueError("ExactPosterior needs an analytic prior (GaussianMixture or Gaussian)")
        return ExactKernel(self, problem, prior, chains, num_samples)

    def draw(self, exact, n: int, generator):
        """``n`` draws from one exact posterior (a hook for deliberately wrong variants in tests)."""
        return exact.sample(n, seed=generator)


@dataclass(frozen=True)
class ExactState:
    x: Tensor | None  # (chains * num_samples, *event_shape): the draws, once made
    log_evidence: Tensor | None  # (chains,): each chain's exact log p(y), once computed; None per draw


@dataclass
class ExactKernel(Kernel):
    """Exact draws for one problem (``y`` one per draw when batched), in one step."""

    settings: ExactPosterior
    problem: InverseProblem
    prior: object
    chains: int
    num_samples: int

    State = ExactState
    steps = 1
    checkpoints = False

    def init(self, generator):
        return ExactState(None, None)

    def step(self, state, k, generator):
        problem, prior, draw = self.problem, self.prior, self.settings.draw
        if not problem.batched:
            x = draw(prior.posterior(problem), self.chains * self.num_samples, generator)
            log_evidence = prior.log_evidence(problem).double().expand(self.chains)
        else:
            per_chain = problem.y.reshape(self.chains, self.num_samples, *problem.y.shape[1:])
            if bool((per_chain == per_chain[:, :1]).all()):  # one measurement per chain
                ys, size = per_chain[:, 0], self.num_samples
            else:  # one per draw
                ys, size = problem.y, 1
            problems = [InverseProblem(problem.operator, problem.noise, y) for y in ys]
            x = torch.cat([draw(prior.posterior(p), size, generator) for p in problems])
            log_evidence = (
                torch.stack([prior.log_evidence(p).double() for p in problems]) if size > 1 else None
            )
        return ExactState(x, log_evidence), Info(0.0, check=(x,))

    def finish(self, state, generator):
        if state.log_evidence is None:
            return state.x, {}
        return state.x, {"log_evidence": state.log_evidence.reshape(1, -1)}
