"""What every sampler shares: input validation, seeding, NFE counting, NaN guards and the result."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
from torch import Tensor

from posterior.priors.base import DiffusionPrior
from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples
from posterior.utils import make_generator


class CountingPrior:
    """Wraps a prior and counts denoiser calls (NFE per sample: a batched call counts once)."""

    def __init__(self, prior: DiffusionPrior):
        self.prior, self.nfe, self.grad_evals = prior, 0, 0

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.nfe += 1
        return self.prior.denoise(x, sigma)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.nfe += 1
        return self.prior.score(x, sigma)

    def __getattr__(self, name):  # event_shape, sigma_min, sigma_max, ...; sample() is not for samplers
        return getattr(self.prior, name)


def one_y_per_chain(problem: InverseProblem, chains: int, num_samples: int, who: str) -> InverseProblem:
    """The problem with one measurement per chain, ``y`` of shape ``(chains, *out_shape)``, for samplers
    whose draws of a chain share one state (particles, a Markov chain, a fitted ``q``). A single ``y``
    is returned as it is; a batched ``y`` whose rows differ within a chain is refused."""
    if not problem.batched:
        return problem
    per_chain = problem.y.reshape(chains, num_samples, *problem.y.shape[1:])
    if not bool((per_chain == per_chain[:, :1]).all()):
        raise ValueError(
            f"{who}: the draws of a chain share one measurement; give y one per chain "
            f"(shape ({chains}, *out_shape)), not one per draw"
        )
    return InverseProblem(problem.operator, problem.noise, per_chain[:, 0])


def tweedie_guidance(
    problem: InverseProblem, prior: CountingPrior, x: Tensor, sigma: Tensor, objective: str | Callable
) -> tuple[Tensor, Tensor]:
    """Tweedie estimate ``x0_hat = D(x, sigma)`` and the gradient, through the denoiser, of a data term at it.

    ``objective="likelihood"`` differentiates ``log p(y | x0_hat)``; ``"residual"`` differentiates
    ``-||y - A(x0_hat)||_2`` per sample (the DPS paper's normalised step); a callable
    ``objective(x0_hat) -> (n,)`` is differentiated as it is. One NFE and one vector-Jacobian product.

    Returns
    -------
    x0_hat : Tensor, shape (n, *event_shape), detached
    grad : Tensor, shape (n, *event_shape)
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        x0_hat = prior.denoise(x, sigma)
        if callable(objective):
            value = objective(x0_hat)
        elif objective == "likelihood":
            value = problem.log_likelihood(x0_hat)
        else:
            residual = problem.y - problem.operator(x0_hat)
            value = -torch.sqrt((residual.reshape(x.shape[0], -1) ** 2).sum(1) + torch.finfo(x.dtype).tiny)
        (grad,) = torch.autograd.grad(value.sum(), x)
    prior.grad_evals += 1
    return x0_hat.detach(), grad


def check_finite(x: Tensor, sampler: str, step: int, sigma: float) -> None:
    """Stop a run that produced NaN or inf, naming where."""
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"{sampler}: non-finite values at step {step} (sigma={sigma:.4g}); "
            "lower the step size or check the prior and the likelihood"
        )


@dataclasses.dataclass
class Sampler:
    """Base class of the samplers: a dataclass of hyperparameters plus :meth:`sample`.

    Subclasses implement ``run(problem, prior, chains, num_samples, generator, progress, callback)``
    returning ``(samples of shape (chains * num_samples, *event_shape), trace dict)``, chain-major,
    and set ``kind``. A ``"log_weights"`` entry of the trace, shape ``(chains, num_samples)``, becomes the
    result's importance weights.
    """

    kind = "samples"

    def sample(
        self,
        problem: InverseProblem,
        prior: DiffusionPrior,
        num_samples: int,
        *,
        chains: int = 1,
        seed: int | torch.Generator | None = None,
        progress: bool = True,
        callback: Callable[[int, dict], None] | None = None,
    ) -> PosteriorSamples:
        """Draw ``chains * num_samples`` posterior samples as one batch.

        Parameters
        ----------
        problem : InverseProblem
            A batched ``y`` holds one measurement per draw (``chains * num_samples``) or one per
            chain (``chains``), shared by that chain's draws: many problems in one call.
        prior : DiffusionPrior
        num_samples : int
            Draws per chain (particles per run for the SMC samplers).
        chains : int
            Independent chains (for the SMC samplers, independent runs; for samplers without chains,
            independent groups of draws).
        seed : int or torch.Generator, optional
            The same seed gives the same samples on the same device.
        progress : bool
            Show a progress bar.
        callback : callable, optional
            Called as ``callback(step, state)`` after every step, ``state`` a dict of tensors.

        Returns
        -------
        PosteriorSamples
            ``samples`` of shape ``(chains, num_samples, *prior.event_shape)``.
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(chains, int) or chains < 1:
            raise ValueError(f"chains must be a positive int, got {chains!r}")
        if not isinstance(problem, InverseProblem):
            raise TypeError(f"problem must be a posterior.InverseProblem, got {type(problem).__name__}")
        if not isinstance(prior, DiffusionPrior):
            raise TypeError(f"prior must be a posterior.priors.DiffusionPrior, got {type(prior).__name__}")
        if tuple(problem.in_shape) != tuple(prior.event_shape):
            raise ValueError(
                f"operator.in_shape {problem.in_shape} does not match prior.event_shape {prior.event_shape}"
            )
        if prior.dtype != problem.y.dtype:
            raise TypeError(
                f"prior has dtype {prior.dtype} but y has dtype {problem.y.dtype}; convert one of them "
                "(e.g. pretrained(..., dtype=...), GaussianMixture.to(dtype=...), or y.to(...))"
            )
        if torch.device(prior.device).type != problem.y.device.type:
            raise ValueError(
                f"prior is on device {prior.device} but y is on {problem.y.device}; use one device"
            )
        n = chains * num_samples
        if problem.batched and problem.y.shape[0] not in (chains, n):
            raise ValueError(
                f"y holds {problem.y.shape[0]} measurements; expected one per chain ({chains}) "
                f"or one per sample (chains * num_samples = {n})"
            )
        if problem.batched and problem.y.shape[0] != n:  # one y per chain, shared by its draws
            problem = InverseProblem(
                problem.operator, problem.noise, problem.y.repeat_interleave(num_samples, 0)
            )
        generator, _ = make_generator(seed, problem.y.device)
        counted = CountingPrior(prior)
        start = time.perf_counter()
        x, trace = self.run(problem, counted, chains, num_samples, generator, progress, callback)
        wall = time.perf_counter() - start
        log_weights = trace.pop("log_weights", None)
        with torch.no_grad():
            log_likelihood = problem.log_likelihood(x.detach())
        return PosteriorSamples(
            samples=x.detach().reshape(chains, num_samples, *prior.event_shape),
            log_weights=log_weights,
            sample_stats={"log_likelihood": log_likelihood.reshape(chains, num_samples)},
            nfe=counted.nfe,
            grad_evals=counted.grad_evals,
            wall_time=wall,
            trace=trace,
            sampler=type(self).__name__,
            config=dataclasses.asdict(self),
            kind=self.kind,
        )

    def run(self, problem, prior, chains, num_samples, generator, progress, callback):
        raise NotImplementedError
