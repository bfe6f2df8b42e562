"""What the driver reports every step to: progress bar, NaN guard, callback and checkpoints.

:meth:`Sampler.drive <posterior.samplers.base.Sampler.drive>` runs a kernel
(:mod:`posterior.samplers.kernel`) through a :class:`Loop`: :meth:`Loop.resume` gives the step to start
from and the state (fresh, or a checkpoint's), and :meth:`Loop.done` after every step stops a run
whose tensors went non-finite (saving the last good state first), calls the user's callback, and every
``checkpoint_every`` steps writes the state together with the random generator's state and the NFE
counters, atomically. ``resume=`` (a checkpoint file) makes :meth:`Loop.resume` hand back that state
and step, with the generator and counters restored, so the run continues bit for bit as if it had
never stopped. States are immutable (a step builds a new one), so the last good state is kept by
reference. They hold tensors, numbers, strings and tuples, lists and dicts of them; files are read
with ``torch.load(weights_only=True)``, which runs no code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import types
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy
import torch
from torch import Tensor

from operators.checks import as_int
from posterior.diagnostics import RANGE_FACTOR, out_of_range
from posterior.utils import atomic_write, refuse_to_replace, wrong_field

FORMAT = 3  # 2: the fingerprint of issue 20 (settings, seed, digests); 3: kernel states
# A checkpoint's fields and their types, checked before any is used
FIELDS = {
    "format": int,
    "step": int,
    "state": dict,
    "rng": Tensor,
    "nfe": int,
    "grad_evals": int,
    "fingerprint": dict,
}


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
        What a checkpoint must match to be resumed (:func:`fingerprint`); computed at the start when
        ``checkpoint`` or ``resume`` is given, else only if a failed run saves its state.
    progress : bool or str
        Show a progress bar (a string is its label).
    callback : callable, optional
        ``callback(step, state)`` after every step.
    checkpoint : path, optional
        Where to write the state every ``checkpoint_every`` steps (and the last good state on failure);
        an existing file there that is not a posterior checkpoint is refused (``FileExistsError``).
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
        progress: bool | str = True,
        callback: Callable[[int, dict], None] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 10,
        resume: str | os.PathLike | None = None,
        group=None,
    ):
        checkpoint_every = as_int(checkpoint_every, "checkpoint_every", minimum=1)
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
        if checkpoint is not None or resume is not None:  # before the run changes any cache
            self._fingerprint = fingerprint()
        self.written: set[Path] = set()  # files this loop wrote (replaced without a check)
        if self.checkpoint is not None:  # at the door, not after the first steps
            self.refuse_foreign(self.checkpoint)

    # -- the sampler's side ------------------------------------------------------------------------
    def resume(
        self, initial: Callable[[], dict], total: int, shown: Callable[[int, dict], int]
    ) -> tuple[int, dict]:
        """The step to start from and the loop state: ``(0, initial())``, or the checkpoint's.

        ``initial`` is only called for a fresh run (it may spend NFE and random draws). ``total`` is
        the number of steps the progress bar shows, and ``shown(start, state)`` how many of them are
        done (samplers with sub-steps count differently).
        """
        if self.resume_from is None:
            start, state = 0, initial()
        else:
            start, state = self.load(self.resume_from)
        self.last_good = self.snapshot(start, state)
        if self.progress:
            from tqdm import tqdm  # the plain bar: one text line, also in Jupyter (no widget)

            done = shown(start, state)
            desc = self.progress if isinstance(self.progress, str) else self.name  # e.g. "AFDPS (1 of 2)"
            self.bar = tqdm(total=total, initial=done, desc=desc, leave=True, dynamic_ncols=True)
        return start, state

    def done(
        self,
        step: int,
        sigma: float | Tensor,
        state: dict,
        *,
        check: Sequence[Tensor] = (),
        view: dict | Callable[[], dict] | None = None,
        advance: bool = True,
    ) -> None:
        """Step ``step`` (0-based) ended at noise level ``sigma`` with ``state``.

        ``sigma``: a number, or one per chain (messages name the largest); ``check``: tensors that
        must be finite, the first of them the draws or state whose first departure from the prior's
        range (:func:`posterior.diagnostics.out_of_range`, given ``bounds``) is recorded as
        ``departure``; ``view``: what the callback sees (default ``state``; a callable is called only
        when there is a callback); ``advance``: whether the progress bar moves (sub-steps do not).
        ``state`` is kept as it is: its tensors must not be modified afterwards.
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
            shown = state if view is None else view() if callable(view) else view
            self.callback(step, {**shown, "sigma": sigma})
        if self.checkpoint is not None and (step + 1) % self.every == 0:
            self.save(self.checkpoint, self.last_good)

    def fail(self, step: int, sigma: float | Tensor, what: str, hint: str | None = None):
        """Save the last good state and raise ``FloatingPointError`` naming the sampler, step, sigma and
        the file that holds the state: the checkpoint path, or without one :meth:`last_good_path`
        (one file per sampler and process in the temporary folder, replaced by its next failure)."""
        self.close()
        where = ""
        if self.last_good is not None and self.group is None:
            path = self.checkpoint or self.last_good_path()
            try:
                self.save(path, self.last_good)
                where = f" The last good state (step {self.step}) is saved in {path}"
            except OSError as err:  # a read-only folder, a file that is not a checkpoint
                where = f" The last good state could not be saved ({err}); pass checkpoint= to choose where"
        hint = hint or "lower the step size or check the prior and the likelihood"
        sigma = float(torch.as_tensor(sigma).max())
        raise FloatingPointError(f"{self.name}: {what} at step {step} (sigma={sigma:.4g}); {hint}.{where}")

    def last_good_path(self) -> Path:
        """Where a run without ``checkpoint=`` saves its last good state when it fails:
        ``posterior-<sampler>-<process id>-last-good.pt`` in :func:`tempfile.gettempdir` (``$TMPDIR``),
        so that runs in parallel processes keep their own."""
        return Path(tempfile.gettempdir()) / f"posterior-{self.name}-{os.getpid()}-last-good.pt"

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
            "state": dict(state),
            "rng": self.generator.get_state(),
            "nfe": self.counters.nfe,
            "grad_evals": self.counters.grad_evals,
        }

    def save(self, path: Path, snapshot: dict) -> None:
        """Write ``snapshot`` to ``path`` atomically; the first write refuses a file that is not a checkpoint."""
        if path not in self.written:
            self.refuse_foreign(path)
        atomic_write(path, lambda tmp: torch.save({**snapshot, "fingerprint": self.fingerprint}, tmp))
        self.written.add(path)

    def refuse_foreign(self, path: Path) -> None:
        """Raise ``FileExistsError`` if ``path`` exists and is not a posterior checkpoint."""

        def is_checkpoint(path: Path) -> bool:
            try:
                read_checkpoint(path, mmap=True)  # the tensors stay on disk
            except (ValueError, OSError):
                return False
            return True

        refuse_to_replace(path, is_checkpoint, "a posterior checkpoint", "remove it or choose another path")

    def load(self, path: str | os.PathLike) -> tuple[int, dict]:
        """The step and state of a checkpoint (tensors on the devices they were saved from; the
        fingerprint requires the same device), with the generator and the counters restored.
        A truncated, foreign or tampered file, or one of another run, raises one ``ValueError`` naming it."""
        saved = read_checkpoint(path)
        differs = mismatch(saved["fingerprint"], self.fingerprint)
        if differs:
            raise ValueError(f"{path} was written by a different run: {differs}")
        try:
            self.generator.set_state(saved["rng"].cpu())
        except (RuntimeError, TypeError) as err:
            raise ValueError(
                f"{path} is not a usable posterior checkpoint: 'rng' is no generator state"
            ) from err
        self.counters.nfe, self.counters.grad_evals = saved["nfe"], saved["grad_evals"]
        return saved["step"], saved["state"]


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
    """The fields of a checkpoint file, read with ``torch.load(weights_only=True)`` (no code runs);
    ``ValueError`` naming the file for one that is truncated, foreign or lacks a field of :data:`FIELDS`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    try:  # a torch.save file is a zip archive; truncating it loses the archive's directory at its end
        saved = torch.load(path, weights_only=True, mmap=mmap) if zipfile.is_zipfile(path) else None
    except Exception as err:  # damaged archives raise RuntimeError, KeyError, OSError, UnpicklingError...
        reason = str(err).split("\n", 1)[0][:120] or type(err).__name__
        raise ValueError(f"{path} is not a posterior checkpoint: {reason}") from err
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is not a posterior checkpoint: truncated, or not written by a sampler")
    wrong = wrong_field(saved, FIELDS)
    if wrong is None and saved["format"] != FORMAT:
        wrong = f"format {saved['format']}, expected {FORMAT}"
    elif wrong is None and saved["step"] < 0:
        wrong = f"'step' is {saved['step']}"
    if wrong is not None:
        raise ValueError(f"{path} is not a usable posterior checkpoint: {wrong}")
    return saved


def fingerprint(sampler, problem, prior, num_samples: int, chains: int, seed: str) -> dict:
    """What identifies a run, field by field, in the order a mismatch is reported: the sampler and its
    full configuration, the sizes, the seed (:func:`seed_name`), dtype and device, then digests of the
    operator, the noise model, the prior, the sampler's :meth:`~posterior.samplers.base.Sampler.resources`
    (their tensors, numbers and types, see :func:`digest`) and ``y``."""
    config = {k: v if _plain(v) else digest(v) for k, v in vars(sampler).items()}
    return {
        "sampler": type(sampler).__name__,
        "config": json.dumps(config),  # in field order: a mismatch names the first field
        "num_samples": num_samples,
        "chains": chains,
        "seed": seed,
        "dtype": str(problem.y.dtype),
        "device": str(problem.y.device),
        "operator": digest(problem.operator),
        "noise": digest(problem.noise),
        "prior": digest(prior),
        "resources": digest(sampler.resources(prior)),
        "y": digest(problem.y),
    }


def mismatch(saved: dict, current: dict) -> str | None:
    """The first field in which a checkpoint's fingerprint differs from this run's, as a phrase, or None."""
    for field, value in current.items():
        if saved.get(field) == value:
            continue
        if field == "config" and isinstance(saved.get(field), str):
            try:
                old, new = json.loads(saved[field]), json.loads(value)
            except json.JSONDecodeError:  # a tampered file
                return "its config is not readable"
            for key in new:
                if isinstance(old, dict) and old.get(key) != new[key]:
                    return f"its setting {key} is {old.get(key)!r}, this run's is {new[key]!r}"
        if field in ("operator", "noise", "prior", "resources", "y", "config") or field not in saved:
            return f"its {field} differs from this run's"
        return f"its {field} is {saved[field]}, this run's is {value}"
    return None


def seed_name(seed: int | torch.Generator | None) -> str:
    """The seed as a fingerprint field: the int, ``"random"`` for None (a checkpoint restores the
    generator), or a digest of a given generator's state at the start of the run."""
    if seed is None:
        return "random"
    if isinstance(seed, torch.Generator):
        return "generator " + digest(seed.get_state())[:16]
    return str(int(seed))


def digest(obj) -> str:
    """A SHA-256 of what an object is made of: its type and, recursively, its attributes (except the
    caches its class names in ``_cached``; for a ``torch.nn.Module``, its ``state_dict`` and public
    attributes), tensors' dtypes, shapes and bytes, numbers, strings, containers and functions (their
    code, constants and closures)."""
    h = hashlib.sha256()
    _feed(h, obj, {})
    return h.hexdigest()


def _feed(h, obj, seen: dict) -> None:
    """Feed ``obj`` into the hash ``h``; ``seen`` holds the containers and objects already fed (kept
    alive, so that a freed temporary's address is not mistaken for one of them)."""

    def put(*parts):
        for part in parts:
            h.update(part if isinstance(part, bytes) else str(part).encode() + b"\0")

    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes | torch.dtype | torch.device):
        return put(type(obj).__name__, repr(obj))
    if isinstance(obj, Tensor):
        t = obj.detach().cpu()
        if t.is_sparse:
            t = t.coalesce()
            put("sparse", tuple(t.shape))
            _feed(h, t.indices(), seen)
            return _feed(h, t.values(), seen)
        t = t.contiguous().reshape(-1)
        return put("tensor", obj.dtype, tuple(obj.shape), t.view(torch.uint8).numpy().tobytes())
    if isinstance(obj, numpy.ndarray | numpy.generic):
        return put("array", obj.dtype, obj.shape, numpy.ascontiguousarray(obj).tobytes())
    if id(obj) in seen:
        return put("seen")
    seen[id(obj)] = obj
    if isinstance(obj, list | tuple):
        put(type(obj).__name__, len(obj))
        for item in obj:
            _feed(h, item, seen)
    elif isinstance(obj, dict):
        put("dict", len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key, seen)
            _feed(h, obj[key], seen)
    elif isinstance(obj, types.MethodType):
        _feed(h, [obj.__func__, obj.__self__], seen)
    elif isinstance(obj, functools.partial):
        _feed(h, ["partial", obj.func, obj.args, obj.keywords], seen)
    elif isinstance(obj, types.CodeType):
        put("code", obj.co_code)
        _feed(h, list(obj.co_consts), seen)  # nested functions' code too
    elif isinstance(obj, types.FunctionType):
        put("function", obj.__module__, obj.__qualname__)
        closure = [cell.cell_contents for cell in obj.__closure__ or ()]
        _feed(h, [obj.__code__, closure, obj.__defaults__, obj.__kwdefaults__], seen)
    elif isinstance(obj, types.BuiltinFunctionType | types.BuiltinMethodType):
        put("builtin", getattr(obj, "__module__", None), obj.__qualname__)
    else:
        put(type(obj).__module__, type(obj).__qualname__)
        cached = getattr(obj, "_cached", ())
        attributes = {k: v for k, v in getattr(obj, "__dict__", {}).items() if k not in cached}
        if isinstance(obj, torch.nn.Module):  # its tensors, and what else its owner set on it
            attributes = {k: v for k, v in attributes.items() if not k.startswith("_") and k != "training"}
            attributes["state_dict"] = dict(obj.state_dict())
        _feed(h, attributes, seen)


def _plain(value) -> bool:
    """Whether a configuration value is plain data (numbers, strings, their tuples and lists)."""
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True

