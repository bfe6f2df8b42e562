"""Handwritten digits (scikit-learn's bundled 8x8 set, offline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_DIGITS = 1797
NUM_TEST = 297
SPLITS = ("train", "test", "all")


def digits(split: str = "train", size: int = 16) -> Tensor:
    """The 1797 scikit-learn digits, scaled to ``[0, 1]`` and upsampled bilinearly to ``size x size``.

    The split is fixed: a permutation drawn from ``torch.Generator().manual_seed(0)``; its first
    1500 images are ``"train"``, the last 297 ``"test"`` (held out). ``"all"`` gives all 1797 in
    the original order.

    Parameters
    ----------
    split : {"train", "test", "all"}
    size : int
        Side length of the returned images (8 is the native resolution; no interpolation then).

    Returns
    -------
    Tensor, shape (n, 1, size, size), float32 in [0, 1]; n = 1500, 297 or 1797.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("posterior.data.digits needs scikit-learn: pip install 'posterior[data]'") from err
    images = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16.0  # (1797, 8, 8), 0..16
    x = images.unsqueeze(1)
    if split != "all":
        perm = torch.randperm(NUM_DIGITS, generator=torch.Generator().manual_seed(0))
        idx = perm[: NUM_DIGITS - NUM_TEST] if split == "train" else perm[NUM_DIGITS - NUM_TEST :]
        x = x[idx]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0.0, 1.0).contiguous()
