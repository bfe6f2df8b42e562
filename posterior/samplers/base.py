"""What every sampler shares: input validation, seeding, NFE counting, NaN guards and the result."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from operators.checks import as_int
from posterior import diagnostics
from posterior.priors.base import DiffusionPrior
from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples, measurement_digest
from posterior.samplers.kernel import Divergence, Kernel, state_fields
from posterior.samplers.loop import Loop, fingerprint, seed_name
from posterior.samplers.settings import check_settings
from posterior.utils import make_generator

DATA_TERM = "the data term (the forward model or the likelihood, or its gradient)"


class CountingPrior:
    """Wraps a prior and counts denoiser calls (NFE per sample: a batched call counts once).

    With ``max_batch`` set, a call on more rows runs the network on micro-batches of at most
    ``max_batch`` rows (the result is the same; peak memory is that of one micro-batch). With ``loop``
    set, a denoiser output with NaN or inf stops the run there (:meth:`Loop.fail`).
    """

    def __init__(self, prior: DiffusionPrior, max_batch: int | None = None, loop: Loop | None = None):
        if max_batch is not None:
            max_batch = as_int(max_batch, "max_batch", minimum=1)
        self.prior, self.max_batch, self.loop, self.nfe, self.grad_evals = prior, max_batch, loop, 0, 0

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.nfe += 1
        return self._checked(self._denoise(x, sigma), sigma, x)

    def _checked(self, out: Tensor, sigma: float | Tensor, x: Tensor, what: str = "the denoiser") -> Tensor:
        """``out``, or a stop of the run when it is not finite, blaming ``what`` only if ``x`` was finite."""
        # a run split across processes checks its particles globally (a local stop would hang the others)
        if self.loop is not None and self.loop.group is None and not bool(torch.isfinite(out.detach()).all()):
            if not bool(torch.isfinite(x.detach()).all()):
                what = "the state before a denoiser call (a likelihood step of the sampler)"
            hint = (
                "check that the forward model and the likelihood are finite for any x"
                if what == DATA_TERM
                else None
            )
            self.loop.fail(self.loop.step, sigma, f"{what} returned non-finite values", hint)
        return out

    def _denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        n = x.shape[0]
        if self.max_batch is None or n <= self.max_batch:
            return self.prior.denoise(x, sigma)
        return torch.cat(
            [self.prior.denoise(x[rows], rows_of(sigma, rows, n)) for rows in self._micro_batches(n)]
        )

    def _micro_batches(self, n: int) -> list[slice]:
        return [slice(i, i + self.max_batch) for i in range(0, n, self.max_batch)]

    def denoise_vjp(
        self, x: Tensor, sigma: float | Tensor, objective: Callable
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x0_hat = D(x, sigma)``, ``value = objective(x0_hat)`` (shape ``(n,)``) and ``grad_x sum(value)``
        through the network: 1 NFE and 1 vector-Jacobian product.

        With micro-batches the forward pass is run twice (once without a graph, then per micro-batch
        with the backward pass), so that memory stays that of one micro-batch.
        """
        self.nfe += 1
        self.grad_evals += 1
        with torch.enable_grad():
            if self.max_batch is None or x.shape[0] <= self.max_batch:
                x = x.detach().requires_grad_(True)
                x0_hat = self._checked(self.prior.denoise(x, sigma), sigma, x)
                value = self._checked(objective(x0_hat), sigma, x0_hat, DATA_TERM)
                (grad,) = torch.autograd.grad(value.sum(), x)
                return x0_hat.detach(), value.detach(), self._checked(grad, sigma, x0_hat, DATA_TERM)
            with torch.no_grad():
                x0_hat = self._checked(self._denoise(x, sigma), sigma, x)
            x0_leaf = x0_hat.requires_grad_(True)
            value = self._checked(objective(x0_leaf), sigma, x0_hat, DATA_TERM)
            (cotangent,) = torch.autograd.grad(value.sum(), x0_leaf)
            self._checked(cotangent, sigma, x0_hat, DATA_TERM)
            grads = []
            for rows in self._micro_batches(x.shape[0]):
                xb = x[rows].detach().requires_grad_(True)
                out = self.prior.denoise(xb, rows_of(sigma, rows, x.shape[0]))
                grads.append(torch.autograd.grad(out, xb, cotangent[rows])[0])
        return x0_hat.detach(), value.detach(), torch.cat(grads)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.nfe += 1
        return self.prior.score(x, sigma)

    def __getattr__(self, name):  # event_shape, sigma_min, sigma_max, ...; sample() is not for samplers
        return getattr(self.prior, name)


def rows_of(sigma: float | Tensor, rows: slice, n: int) -> float | Tensor:
    """``sigma`` for the rows ``rows`` of a batch of ``n``: sliced when it has one value per row."""
    if isinstance(sigma, Tensor) and sigma.dim() > 0 and sigma.shape[0] == n:
        return sigma[rows]
    return sigma


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


@dataclasses.dataclass
class Sampler:
    """Base class of the samplers: a dataclass of hyperparameters plus :meth:`sample`.

    Subclasses implement :meth:`build_kernel`, which binds the settings to one problem as a
    :class:`~posterior.samplers.kernel.Kernel` (a state and a pure step), and set ``kind``;
    :meth:`sample` validates the inputs and drives the kernel (:meth:`drive`).
    """

    kind = "samples"
    shardable = False  # particle samplers can split one run's particles across processes
    divergence_hint = "lower the step size or use more steps"  # what to change when draws diverge
    limits: ClassVar[dict] = {}  # field -> Range or tuple of choices (posterior.samplers.settings)

    def __post_init__(self):
        check_settings(self)

    def sample(
        self,
        problem: InverseProblem,
        prior: DiffusionPrior,
        num_samples: int,
        *,
        chains: int = 1,
        seed: int | torch.Generator | None = None,
        progress: bool | str = True,
        callback: Callable[[int, dict], None] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        resume: str | os.PathLike | None = None,
        max_batch: int | None = None,
        group=None,
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
        progress : bool or str
            Show a progress bar (a string is its label; it stays as one line when done).
        callback : callable, optional
            Called as ``callback(step, state)`` after every step, ``state`` a dict of tensors.
        checkpoint : path, optional
            Write the run's state (draws, weights, optimiser state, random generator state, step,
            counters) to this file every ``checkpoint_every`` steps, atomically. A run that stops
            on NaN/inf saves its last good state here (or in a temporary file, named in the error).
        checkpoint_every : int
        resume : path, optional
            A checkpoint of the same sampler, configuration, problem, ``num_samples`` and ``chains``:
            the run continues from it and gives the same result, bit for bit, as an uninterrupted run
            with the same seed on the same device. The result's ``wall_time`` counts this call only.
        max_batch : int, optional
            Run the network on micro-batches of at most this many rows (same result, bounded memory).
        group : torch.distributed process group, optional
            Particle samplers only: split each run's ``num_samples`` particles across the group's
            processes, with global resampling (see :func:`posterior.distributed.run_many`).

        Returns
        -------
        PosteriorSamples
            ``samples`` of shape ``(chains, num_samples, *prior.event_shape)``.
        """
        check_settings(self)  # again: a field may have been changed since the sampler was built
        num_samples = as_int(num_samples, "num_samples", minimum=1)
        chains = as_int(chains, "chains", minimum=1)
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
        shared_measurement = not problem.batched
        if problem.batched and problem.y.shape[0] not in (chains, n):
            raise ValueError(
                f"y holds {problem.y.shape[0]} measurements; expected one per chain ({chains}) "
                f"or one per sample (chains * num_samples = {n})"
            )
        if problem.batched and problem.y.shape[0] != n:  # one y per chain, shared by its draws
            problem = InverseProblem(
                problem.operator, problem.noise, problem.y.repeat_interleave(num_samples, 0)
            )
        if group is not None and not self.shardable:
            raise ValueError(f"{type(self).__name__} cannot split a run across processes (group=)")
        diagnostics.check_measurement(problem, prior, type(self).__name__, stacklevel=3)
        generator, _ = make_generator(seed, problem.y.device)
        seed = seed_name(seed)
        counted = CountingPrior(prior, max_batch)
        counted.loop = loop = Loop(
            type(self).__name__,
            generator,
            counted,
            lambda: fingerprint(self, problem, prior, num_samples, chains, seed),
            progress=progress,
            callback=callback,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            group=group,
        )
        if diagnostics.rms(prior.location_scale()[1]) > 0:
            loop.bounds = prior.location_scale()
        start = time.perf_counter()
        try:
            x, trace = self.drive(self.build_kernel(problem, counted, chains, num_samples, group), generator, loop)
        finally:
            loop.close()
        wall = time.perf_counter() - start
        log_weights = trace.pop("log_weights", None)
        with torch.no_grad():
            log_likelihood = problem.log_likelihood(x.detach())
        result = PosteriorSamples(
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
            shared_measurement=shared_measurement,
            measurement=measurement_digest(problem.y) if shared_measurement else "",
        )
        diagnostics.check(
            result,
            prior=prior,
            departure=loop.departure,
            hint=self.divergence_hint,
            stacklevel=3,
        )
        return result

    def resources(self, prior) -> dict:
        """What the sampler reads besides its settings (e.g. a network named by a setting), for the
        fingerprint that checkpoints must match; none by default."""
        return {}

    def build_kernel(self, problem: InverseProblem, prior, chains: int, num_samples: int, group=None) -> Kernel:
        """This sampler's :class:`~posterior.samplers.kernel.Kernel` for one problem (checks the problem
        and precomputes what does not change between steps). ``prior`` counts NFE; ``y`` holds one row
        per draw when batched; ``group`` splits particle samplers across processes."""
        raise NotImplementedError

    @staticmethod
    def drive(kernel: Kernel, generator: torch.Generator, loop: Loop) -> tuple[Tensor, dict]:
        """Run ``kernel`` from its initial state (or the checkpoint ``loop`` resumes) to its end: each
        state goes to ``loop`` (NaN guard, callback, checkpoints, progress); returns ``kernel.finish``."""
        if not kernel.checkpoints and (loop.checkpoint is not None or loop.resume_from is not None):
            raise ValueError(f"{loop.name} draws in one step: there is nothing to checkpoint or resume")

        def initial() -> dict:
            try:
                return state_fields(kernel.init(generator))
            except Divergence as stop:  # e.g. every start weight of an SMC run is zero
                loop.fail(0, stop.sigma, stop.what, stop.hint)

        start, fields = loop.resume(
            initial,
            kernel.steps,
            lambda k, saved: kernel.shown(kernel.State(**saved), k),
        )
        state, k = kernel.State(**fields), start
        while not kernel.finished(state, k):
            try:
                state, info = kernel.step(state, k, generator)
            except Divergence as stop:
                loop.fail(k, stop.sigma, stop.what, stop.hint)
            loop.done(k, info.sigma, state_fields(state), check=info.check, view=info.view, advance=info.advance)
            k += 1
        return kernel.finish(state, generator)
