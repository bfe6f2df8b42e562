"""Small helpers shared across the package: seeded generators and progress bars."""

from __future__ import annotations

from collections.abc import Iterable

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
