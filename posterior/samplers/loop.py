"""The step loop every sampler runs through: progress bar, NaN guard, callback and checkpoints.

A sampler's ``run`` is a state and a step::

    start, state = loop.resume(lambda: {"x": initial_x()}, steps)   # a fresh state, or the checkpoint's
    x = state["x"]
    for i in range(start, steps):
        x = ...                                               # one step
        loop.done(i, sigma, {"x": x}, check=(x,))

:meth:`Loop.done` stops a run whose tensors went non-finite (saving the last good state first), calls
the user's callback, and every ``checkpoint_every`` steps writes the state together with the random
generator's state and the NFE counters, atomically. ``resume=`` (a checkpoint file) makes
:meth:`Loop.resume` hand back that state and step, with the generator and counters restored, so the run
continues bit for bit as if it had never stopped. The state holds tensors, numbers, strings and lists,
tuples and dicts of them; files are read with ``torch.load(weights_only=True)``, which runs no code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from posterior.diagnostics import RANGE_FACTOR, out_of_range
from posterior.utils import atomic_write

FORMAT = 1


class Loop:
    """What a sampler's loop reports to after each step (built by :meth:`Sampler.sample`).

    Parameters
    ----------
    name : str
        The sampler's name, for messages.
    generator : torch.Generator
        The run's generator; its state is saved and restored.
    counters : object with ``nfe`` and ``grad_evals``
        The counting prior; its counters are saved and restored.
    fingerprint : callable returning a dict
        What a checkpoint must match to be resumed (sampler, configuration, sizes, measurement);
        only computed when a checkpoint is written or read.
    progress : bool
    callback : callable, optional
        ``callback(step, state)`` after every step.
    checkpoint : path, optional
        Where to write the state every ``checkpoint_every`` steps (and the last good state on failure).
    checkpoint_every : int
    resume : path, optional
        A checkpoint to continue from.
    group : torch.distributed process group, optional
        Set for a particle sampler whose particles are split across processes.
    """

    def __init__(
        self,
        name: str,
        generator: torch.Generator,
        counters,
        fingerprint: Callable[[], dict],
        *,
        progress: bool = True,
        callback: Callable[[int, dict], None] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        resume: str | os.PathLike | None = None,
        group=None,
    ):
        if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
        if group is not None and (checkpoint is not None or resume is not None):
            raise ValueError("checkpoints of a run split across processes (group=) are not supported")
        self.name, self.generator, self.counters = name, generator, counters
        self.make_fingerprint, self.progress, self.callback = fingerprint, progress, callback
        self._fingerprint: dict | None = None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.every, self.resume_from, self.group = checkpoint_every, resume, group
        self.bar = None
        self.last_good: dict | None = None
        self.bounds: tuple[Tensor, float] | None = None  # the prior's (mean, scale) for the range check
        self.departure: tuple[int, float] | None = None  # (step, sigma) where check[0] first left it

    # -- the sampler's side ------------------------------------------------------------------------
    def resume(
        self, initial: Callable[[], dict], total: int, shown: Callable[[int, dict], int] | None = None
    ) -> tuple[int, dict]:
        """The step to start from and the loop state: ``(0, initial())``, or the checkpoint's.

        ``initial`` is only called for a fresh run (it may spend NFE and random draws). ``total`` is
        the number of steps the progress bar shows, and ``shown(start, state)`` how many of them are
        done (default ``start``; samplers with sub-steps count differently).
        """
        if self.resume_from is None:
            start, state = 0, initial()
        else:
            start, state = self.load(self.resume_from)
        self.last_good = self.snapshot(start, state)
        if self.progress:
            from tqdm.auto import tqdm

            done = start if shown is None else shown(start, state)
            self.bar = tqdm(total=total, initial=done, desc=self.name, leave=False, dynamic_ncols=True)
        return start, state

    def done(
        self,
        step: int,
        sigma: float | Tensor,
        state: dict,
        *,
        check: Sequence[Tensor] = (),
        view: dict | None = None,
        advance: bool = True,
    ) -> None:
        """Step ``step`` (0-based) ended at noise level ``sigma`` with ``state``.

        ``sigma``: a number, or one per chain (messages name the largest); ``check``: tensors that
        must be finite, the first of them the draws or state whose first departure from the prior's
        range (:func:`posterior.diagnostics.out_of_range`, given ``bounds``) is recorded as
        ``departure``; ``view``: what the callback sees (default ``state``); ``advance``: whether the
        progress bar moves (sub-steps do not). The sampler must not modify the tensors of ``state`` in
        place afterwards (pass copies of those it updates in place).
        """
        if not all(bool(torch.isfinite(t).all()) for t in check):
            self.fail(step, sigma, "non-finite values")
        if check and self.bounds is not None and self.departure is None:
            if out_of_range(check[0], *self.bounds, sigma) >= RANGE_FACTOR:
                self.departure = (step, float(torch.as_tensor(sigma).max()))
        self.last_good = self.snapshot(step + 1, state)
        if self.bar is not None and advance:
            self.bar.update(1)
        if self.callback is not None:
            self.callback(step, {**(state if view is None else view), "sigma": sigma})
        if self.checkpoint is not None and (step + 1) % self.every == 0:
            self.save(self.checkpoint, self.last_good)

    def fail(self, step: int, sigma: float | Tensor, what: str, hint: str | None = None):
        """Save the last good state and raise ``FloatingPointError`` naming the sampler, step and sigma."""
        self.close()
        where = ""
        if self.last_good is not None and self.group is None:
            path = self.checkpoint
            if path is None:
                fd, name = tempfile.mkstemp(prefix=f"posterior-{self.name}-", suffix=".pt")
                os.close(fd)
                path = Path(name)
            self.save(path, self.last_good)
            where = f" The last good state (step {self.step}) is saved in {path}"
        hint = hint or "lower the step size or check the prior and the likelihood"
        sigma = float(torch.as_tensor(sigma).max())
        raise FloatingPointError(f"{self.name}: {what} at step {step} (sigma={sigma:.4g}); {hint}.{where}")

    @property
    def step(self) -> int:
        """The step under way (0-based): the number of steps done."""
        return self.last_good["step"] if self.last_good is not None else 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- files -----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = self.make_fingerprint()
        return self._fingerprint

    def snapshot(self, step: int, state: dict) -> dict:
        return {
            "format": FORMAT,
            "step": step,
            "state": _copy_containers(state),
            "rng": self.generator.get_state(),
            "nfe": self.counters.nfe,
            "grad_evals": self.counters.grad_evals,
        }

    def save(self, path: Path, snapshot: dict) -> None:
        atomic_write(path, lambda tmp: torch.save({**snapshot, "fingerprint": self.fingerprint}, tmp))

    def load(self, path: str | os.PathLike) -> tuple[int, dict]:
        """The step and state of a checkpoint (tensors on the devices they were saved from; the
        fingerprint requires the same device), with the generator and the counters restored."""
        try:
            saved = torch.load(path, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise ValueError(f"{path} is not a posterior checkpoint: {err}") from err
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{path} is not a posterior checkpoint (format {FORMAT})")
        differ = [k for k in self.fingerprint if saved["fingerprint"].get(k) != self.fingerprint[k]]
        if differ:
            raise ValueError(
                f"{path} was written by a different run: {', '.join(differ)} differ; resume with the "
                "same sampler, configuration, problem, num_samples and chains"
            )
        self.generator.set_state(saved["rng"].cpu())
        self.counters.nfe, self.counters.grad_evals = saved["nfe"], saved["grad_evals"]
        return saved["step"], saved["state"]


def fingerprint(sampler, problem, prior, num_samples: int, chains: int) -> dict:
    """What a checkpoint must match: the sampler and its configuration (its plain-data fields), the
    operator's, noise model's and prior's types, the sizes, dtype, device and the measurement's bytes."""
    config = {k: v for k, v in vars(sampler).items() if _plain(v)}
    y = problem.y.detach().cpu().contiguous().reshape(-1)
    return {
        "sampler": type(sampler).__name__,
        "config": json.dumps(config, sort_keys=True),
        "model": f"{type(problem.operator).__name__}, {type(problem.noise).__name__}, {type(prior).__name__}",
        "num_samples": num_samples,
        "chains": chains,
        "dtype": str(y.dtype),
        "device": str(problem.y.device),
        "y": hashlib.sha256(y.view(torch.uint8).numpy().tobytes()).hexdigest(),
    }


def _plain(value) -> bool:
    """Whether a configuration value is plain data (numbers, strings, their tuples and lists)."""
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def _copy_containers(value):
    """The state with its lists, tuples and dicts copied (tensors shared): later appends do not leak in."""
    if isinstance(value, dict):
        return {k: _copy_containers(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copy_containers(v) for v in value)
    return value
