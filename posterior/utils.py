"""Small helpers shared across the package: seeded generators, progress bars, atomic file writes."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from operators.checks import as_seed

PARTIAL = ".partial"  # the suffix of a file being written by :func:`atomic_write`


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
        gen.manual_seed(as_seed(seed))
    return gen, device


def progress_bar(iterable: Iterable, enabled: bool, desc: str):
    """``tqdm`` over ``iterable`` when ``enabled``, else ``iterable`` unchanged; the bar stays as one
    final line (the plain text bar, also in Jupyter: no widget)."""
    return tqdm(iterable, desc=desc, leave=True, dynamic_ncols=True) if enabled else iterable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    Readers never see a half-written file. The file is created with the process umask (as ``open``
    would). The temporary file is named ``.<name>.<random>.partial`` and removed on any error or
    interrupt; only a process killed outright (``SIGKILL``, power loss) mid-write leaves it behind,
    with ``path`` itself untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{PARTIAL}"
        try:  # mode 0o666 less the umask, applied by the kernel (mkstemp would force 0o600)
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            continue
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        write(str(tmp))
        os.chmod(tmp, mode)  # some writers (safetensors) create the file anew, with mode 0o600
        with open(tmp, "rb+") as f:  # on disk before the rename: a power cut leaves the old file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def refuse_to_replace(path: str | os.PathLike, ours: Callable[[Path], bool], what: str, advice: str) -> None:
    """Raise ``FileExistsError`` when ``path`` exists and ``ours(path)`` is false (a file this library
    did not write as ``what``), so that a write never silently replaces someone else's file."""
    path = Path(path)
    if path.exists() and not ours(path):
        raise FileExistsError(f"{path} exists and is not {what}; {advice}")


def wrong_field(fields: dict, expected: dict[str, type | tuple[type, ...]]) -> str | None:
    """What is wrong with the first of ``expected``'s fields that ``fields`` lacks or holds with another
    type (a bool is not an int), as a phrase, or None: the check of a file's fields before use."""
    for name, kind in expected.items():
        if name not in fields:
            return f"{name!r} is missing"
        value = fields[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return f"{name!r} is {type(value).__name__} {str(value)[:40]}, expected {' or '.join(k.__name__ for k in kinds)}"
    return None


def randn(
    shape, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on the generator's own device), moved to ``device``.

    A CPU generator then drives a CUDA run reproducibly, and the same seed gives the same draws.
    """
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=source).to(device)


def per_row(value: torch.Tensor, dims: int) -> torch.Tensor:
    """A scalar as it is, or one value per row (shape ``(n,)``) shaped ``(n, 1, ..., 1)`` to broadcast
    against tensors of ``dims`` dimensions whose first is ``n``."""
    return value.reshape(-1, *[1] * (dims - 1)) if value.dim() else value


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    import json

    text = json.dumps(obj, indent=1, default=str)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
