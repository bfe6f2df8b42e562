"""The kernel interface: a sampler's update rule as an initial state and a pure step.

:meth:`Sampler.build_kernel <posterior.samplers.base.Sampler.build_kernel>` binds a sampler's settings to one
problem and returns a :class:`Kernel`; the driver (:meth:`Sampler.sample`) owns everything else::

    kernel = sampler.build_kernel(problem, prior, chains, num_samples)
    state = kernel.init(generator)                    # a fresh State (may spend NFE and draws)
    k = 0
    while not kernel.finished(state, k):
        state, info = kernel.step(state, k, generator)   # a new State; the old one is not modified
        k += 1
    samples, trace = kernel.finish(state, generator)

States are frozen dataclasses of tensors, numbers and tuples: a step returns a new state and never
changes the tensors of the one it was given, so the driver can keep the last good state, write
checkpoints and resume from them without copying. :class:`Info` tells the driver the step's noise
level, which tensors must be finite and what a callback sees; a step that finds its run broken raises
:class:`Divergence` (the driver saves the last good state and reports it).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class Info:
    """What one step reports to the driver.

    Attributes
    ----------
    sigma : float or Tensor
        The noise level the step ended at (one per chain for MCMC samplers; messages name the largest).
    check : tuple of Tensor
        Tensors that must be finite; the first is the one whose departure from the prior's range is
        recorded (:func:`posterior.diagnostics.out_of_range`).
    view : dict or callable returning a dict, optional
        What the user's callback sees (default: the state's fields); a callable is only called when
        there is a callback.
    advance : bool
        Whether the progress bar moves (sub-steps do not).
    """

    sigma: float | Tensor
    check: tuple[Tensor, ...] = ()
    view: dict | Callable[[], dict] | None = None
    advance: bool = True


class Divergence(Exception):
    """Raised by a step whose run cannot go on (non-finite values, all weights zero): the driver stops
    the run with a ``FloatingPointError`` naming ``what`` at ``sigma``, with ``hint``."""

    def __init__(self, sigma: float | Tensor, what: str, hint: str | None = None):
        super().__init__(what)
        self.sigma, self.what, self.hint = sigma, what, hint


class Kernel(ABC):
    """A sampler's update rule bound to one problem: ``init``, a pure ``step`` and ``finish``.

    Subclasses set ``State`` (the frozen dataclass of their state, rebuilt from checkpoints) and
    ``steps`` (the number of steps the progress bar shows) and implement the three methods.
    """

    State: ClassVar[type]
    steps: int
    checkpoints: ClassVar[bool] = True  # False: nothing worth a checkpoint (exact draws in one step)

    @abstractmethod
    def init(self, generator: torch.Generator):
        """The state before the first step."""

    @abstractmethod
    def step(self, state, k: int, generator: torch.Generator) -> tuple[object, Info]:
        """Step ``k`` (0-based): the new state and its :class:`Info`."""

    @abstractmethod
    def finish(self, state, generator: torch.Generator) -> tuple[Tensor, dict]:
        """The draws, shape ``(chains * num_samples, *event_shape)`` chain-major, and the trace (a dict
        of tensors; a ``"log_weights"`` entry of shape ``(chains, num_samples)`` becomes the result's
        importance weights)."""

    def finished(self, state, k: int) -> bool:
        """Whether the run is over after ``k`` steps (default: ``k == steps``)."""
        return k >= self.steps

    def shown(self, state, k: int) -> int:
        """How many of the progress bar's ``steps`` are done after ``k`` steps (default ``k``)."""
        return k


def run_to_end(kernel: Kernel, generator: torch.Generator) -> tuple[Tensor, dict]:
    """Run ``kernel`` from ``init`` to ``finish`` without a driver (no progress, checkpoints or callback):
    a kernel composed inside another kernel's step or ``init``, whose driver owns those. A
    :class:`Divergence` propagates to that driver."""
    state, k = kernel.init(generator), 0
    while not kernel.finished(state, k):
        state, _ = kernel.step(state, k, generator)
        k += 1
    return kernel.finish(state, generator)


def state_fields(state) -> dict:
    """A state's fields as a dict (what checkpoints hold; shallow: the tensors are shared)."""
    return {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
