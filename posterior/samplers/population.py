"""Starts drawn from an SMC population: the way across separated modes for the Markov-chain samplers.

A chain (DLG) or an annealed particle (LML) keeps the mode it starts in; drawing its start from the
weighted particles of an AFDPS run gives the chains the posterior's mode weights (``docs/mcmc.md``,
"Crossing modes"). The AFDPS kernel is composed into the caller's ``init``: it runs with the caller's
counting prior and generator, so its NFE and draws are the caller's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from posterior.problem import InverseProblem
from posterior.samplers.afdps import AFDPS
from posterior.samplers.kernel import run_to_end
from posterior.samplers.resampling import inverse_cdf, uniforms


def smc_starts(problem, prior, runs: int, per_run: int, particles: int, steps: int, generator) -> Tensor:
    """``runs * per_run`` draws (run-major) at ``sigma = 0`` from ``runs`` AFDPS populations of
    ``particles`` particles each (``steps`` levels), ``per_run`` drawn from each run's weighted particles
    by systematic resampling.

    ``problem``'s ``y`` is one (not batched) or one per run (``runs`` rows). The AFDPS kernel is driven
    here with the caller's counting ``prior`` and ``generator``, so its NFE and draws are the caller's; a
    broken run raises :class:`~posterior.samplers.kernel.Divergence` (the caller's driver reports it)."""
    if problem.batched:
        problem = InverseProblem(problem.operator, problem.noise, problem.y.repeat_interleave(particles, 0))
    x, trace = run_to_end(AFDPS(steps=steps).build_kernel(problem, prior, runs, particles), generator)
    W = torch.softmax(trace["log_weights"].double(), dim=-1)  # (runs, particles)
    u = uniforms((runs, 1), generator, W.device) + torch.arange(per_run, dtype=W.dtype, device=W.device)
    picked = inverse_cdf(W, u / per_run)  # (runs, per_run): systematic, so the draws follow W closely
    rows = picked + particles * torch.arange(runs, device=W.device)[:, None]
    return x[rows.reshape(-1).to(x.device)]
