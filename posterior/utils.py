"""Small helpers shared across the package: seeded generators, progress bars, atomic file writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm.auto import tqdm


def make_generator(
    seed: int | torch.Generator | None, device: torch.device | str | None = None
) -> tuple[torch.Generator, torch.device]:
    """A ``torch.Generator`` on ``device`` from an integer seed (or a fresh random seed), or the one given."""
    if isinstance(seed, torch.Generator):
        return seed, seed.device
    device = torch.device(device if device is not None else "cpu")
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}")
        gen.manual_seed(seed)
    return gen, device


def progress_bar(iterable: Iterable, enabled: bool, desc: str):
    """``tqdm`` over ``iterable`` when ``enabled``, else ``iterable`` unchanged."""
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True) if enabled else iterable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers never see a half-written file; on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename: a power cut leaves the old file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and weights are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def randn(
    shape, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on the generator's own device), moved to ``device``.

    A CPU generator then drives a CUDA run reproducibly, and the same seed gives the same draws.
    """
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=source).to(device)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    import json

    text = json.dumps(obj, indent=1, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
