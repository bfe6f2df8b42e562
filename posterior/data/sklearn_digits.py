"""Handwritten digits (scikit-learn's bundled 8x8 set, offline) and a shift augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from posterior.utils import make_generator

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


def random_shift(x: Tensor, max_shift: int, generator: torch.Generator | int | None = None) -> Tensor:
    """Shift each image by a random integer offset in ``[-max_shift, max_shift]`` along both axes.

    Pixels shifted in from outside are zero (no wrap-around), so mass is kept exactly when the
    image has a zero border at least ``max_shift`` wide.

    Parameters
    ----------
    x : Tensor, shape (n, ..., H, W)
    max_shift : int
        Largest offset in pixels, ``>= 0``.
    generator : torch.Generator, int or None
        Source of the offsets (an int is a seed).

    Returns
    -------
    Tensor, shape (n, ..., H, W), the same dtype and device as ``x``.
    """
    if not isinstance(max_shift, int) or isinstance(max_shift, bool) or max_shift < 0:
        raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}")
    if x.dim() < 3:
        raise ValueError(f"x has shape {tuple(x.shape)}, expected (n, ..., H, W)")
    if max_shift == 0 or x.shape[0] == 0:
        return x.clone()
    gen, gen_device = make_generator(generator, x.device)
    n, (h, w) = x.shape[0], x.shape[-2:]
    m = max_shift
    shifts = torch.randint(-m, m + 1, (n, 2), generator=gen, device=gen_device).to(x.device)
    flat = x.reshape(n, -1, h, w)
    c = flat.shape[1]
    padded = F.pad(flat, (m, m, m, m))  # zeros; padded[..., r + m, c + m] = x[..., r, c]
    # out[r, c] = x[r - dy, c - dx] = padded[r - dy + m, c - dx + m]
    rows = torch.arange(h, device=x.device) - shifts[:, :1] + m  # (n, h)
    cols = torch.arange(w, device=x.device) - shifts[:, 1:] + m  # (n, w)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * m))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    return out.reshape(x.shape)
