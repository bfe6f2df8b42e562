"""Priors built from other priors: independent sources stacked as channels, and patch-wise frames.

- :class:`StackedPrior`: ``p(x_1, ..., x_S) = prod_s p_s(x_s)``, the sources concatenated along the
  channel axis. Noising is independent per coordinate, so the joint denoiser is the sources'
  denoisers side by side, and any sampler of the library samples a joint posterior through a link
  ``y = link(x_1, ..., x_S) + noise`` written as an operator on the stacked event.
- :class:`PatchedPrior`: a prior trained on small patches used on a larger frame. The state of a
  sampler is the whole frame. The denoiser cuts it into overlapping patches, denoises them in one
  batch and blends the estimates with a smooth window. The patches can never disagree at a seam,
  because they are re-cut from one frame at every step (the role of the "mask-shift" of Stevens et
  al., TMI 2024, done by construction).
- :class:`SubspacePrior`: a prior on a small space lifted by a linear isometry ``A``, ``x = A s``.
  Its denoiser ``A D(A^T x)`` is exact: the noise ``A^T z`` of the small coordinates is again white.
  With :class:`operators.BandlimitedUpsample` it turns a network that sees 4x fewer columns into a
  prior on laterally smooth frames whose patches see 4x more of the frame.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators.base import LinearOperator
from operators.checks import as_int, as_shape
from posterior.priors.base import DiffusionPrior, sigma_tensor


def _check_prior(prior: object, name: str) -> None:
    if not isinstance(prior, DiffusionPrior):
        raise TypeError(f"{name} must be a DiffusionPrior, got {type(prior).__name__}")


class StackedPrior(DiffusionPrior):
    """Independent sources, each with its own prior, stacked along the channel axis (dimension 1).

    Parameters
    ----------
    priors : sequence of DiffusionPrior
        Event shapes ``(C_s, *spatial)`` with one ``spatial``, one dtype and one device. The stacked
        event is ``(sum C_s, *spatial)``; the noise range is the intersection of the priors' ranges.
    """

    def __init__(self, priors: Sequence[DiffusionPrior]):
        priors = list(priors)
        if len(priors) < 1:
            raise ValueError("StackedPrior needs at least one prior")
        for i, p in enumerate(priors):
            _check_prior(p, f"priors[{i}]")
        spatial = {tuple(p.event_shape[1:]) for p in priors}
        if len(spatial) != 1 or any(len(p.event_shape) < 1 for p in priors):
            raise ValueError(
                f"the priors' event shapes must agree after the channel axis, got {[p.event_shape for p in priors]}"
            )
        if len({p.dtype for p in priors}) != 1 or len({torch.device(p.device).type for p in priors}) != 1:
            raise TypeError("the priors must share one dtype and one device")
        self.priors = priors
        self._channels = [p.event_shape[0] for p in priors]
        self.event_shape = (sum(self._channels), *spatial.pop())
        self.sigma_min = max(p.sigma_min for p in priors)
        self.sigma_max = min(p.sigma_max for p in priors)
        if not self.sigma_min < self.sigma_max:
            raise ValueError("the priors' noise ranges [sigma_min, sigma_max] do not overlap")
        self.dtype, self.device = priors[0].dtype, priors[0].device

    @property
    def channels(self) -> list[int]:
        return list(self._channels)

    @property
    def has_log_prob(self) -> bool:
        return all(p.has_log_prob for p in self.priors)

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """The sources of ``x`` (shape ``(..., sum C_s, *spatial)``, channels at dimension -1 - len(spatial))."""
        return torch.split(x, self.channels, dim=x.dim() - len(self.event_shape))

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        return torch.cat([p.denoise(s, sigma) for p, s in zip(self.priors, self.split(x), strict=True)], 1)

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """``sum_s log p_s(x_s)`` of the noised priors, shape ``(n,)`` (when every source has one)."""
        if not self.has_log_prob:
            raise TypeError("StackedPrior.log_prob needs a log_prob for every source (analytic priors)")
        return sum(p.log_prob(s, sigma) for p, s in zip(self.priors, self.split(x), strict=True))

    def sample(self, n: int, **kwargs) -> Tensor:
        """Independent draws of every source, stacked: shape ``(n, *event_shape)``."""
        seed = kwargs.pop("seed", None)
        generator = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
        return torch.cat([p.sample(n, seed=generator, **kwargs) for p in self.priors], 1)

    def __repr__(self) -> str:
        return f"StackedPrior({', '.join(type(p).__name__ for p in self.priors)}; event {self.event_shape})"


def patch_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Evenly spread starts of patches of size ``patch`` covering ``0..length`` with at least ``overlap``
    shared pixels between neighbours."""
    if patch > length:
        raise ValueError(f"the patch ({patch}) is larger than the frame ({length})")
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must lie in [0, {patch}), got {overlap}")
    count = 1 if patch == length else math.ceil((length - patch) / (patch - overlap)) + 1
    return [round(k * (length - patch) / max(count - 1, 1)) for k in range(count)]


class PatchedPrior(DiffusionPrior):
    """A patch prior applied to a frame: overlapping patches denoised in one batch, blended smoothly.

    ``denoise(x, sigma)`` cuts each frame ``(C, H, W)`` into patches of the prior's size ``(C, p, q)``
    at :func:`patch_starts`, denoises all of them, and returns ``sum_k w_k D(patch_k) / sum_k w_k``
    per pixel with the separable window ``w(i) = sin(pi (i + 1/2) / p)`` (zero-free, low at patch
    edges where a network sees the least context).

    Parameters
    ----------
    prior : DiffusionPrior
        Event shape ``(C, p, q)``.
    frame : tuple of int
        ``(H, W)`` with ``H >= p``, ``W >= q``.
    overlap : int or tuple of int
        Least number of shared pixels between neighbouring patches (per axis).
    max_batch : int, optional
        Patches per network call (all at once by default).
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        frame: Sequence[int],
        overlap: int | Sequence[int] = 8,
        max_batch: int | None = None,
    ):
        _check_prior(prior, "prior")
        if len(prior.event_shape) != 3:
            raise ValueError(f"the patch prior must have an image event (C, p, q), got {prior.event_shape}")
        if max_batch is not None:
            max_batch = as_int(max_batch, "max_batch", minimum=1)
        C, p, q = prior.event_shape
        frame = as_shape(frame, "frame")
        if len(frame) != 2:
            raise ValueError(f"frame must be (H, W), got {frame}")
        H, W = frame
        pair = (overlap, overlap) if not isinstance(overlap, Sequence) else tuple(overlap)
        if len(pair) != 2:
            raise ValueError(f"overlap must be an int or a pair of ints, got {overlap!r}")
        oy, ox = (as_int(v, "overlap", minimum=0) for v in pair)
        self.prior, self.max_batch = prior, max_batch
        self.rows, self.cols = patch_starts(H, p, oy), patch_starts(W, q, ox)
        self.event_shape = (C, H, W)
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.dtype, self.device = prior.dtype, prior.device
        window = [torch.sin(math.pi * (torch.arange(k, dtype=torch.float64) + 0.5) / k) for k in (p, q)]
        self.window = window[0][:, None] * window[1][None, :]  # (p, q)

    @property
    def num_patches(self) -> int:
        return len(self.rows) * len(self.cols)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        n = x.shape[0]
        _, p, q = self.prior.event_shape
        s = sigma_tensor(sigma, x).reshape(n)
        patches = torch.stack([x[:, :, r : r + p, c : c + q] for r in self.rows for c in self.cols], 1)
        flat = patches.reshape(n * self.num_patches, *self.prior.event_shape)
        levels = s.repeat_interleave(self.num_patches)
        step = self.max_batch or flat.shape[0]
        denoised = torch.cat(
            [
                self.prior.denoise(flat[k : k + step], levels[k : k + step])
                for k in range(0, flat.shape[0], step)
            ]
        ).reshape(patches.shape)
        window = self.window.to(dtype=x.dtype, device=x.device)
        total, weight = torch.zeros_like(x), torch.zeros_like(x[:1, :1])
        k = 0
        for r in self.rows:
            for c in self.cols:
                total[:, :, r : r + p, c : c + q] += window * denoised[:, k]
                weight[:, :, r : r + p, c : c + q] += window
                k += 1
        return total / weight

    def __repr__(self) -> str:
        return f"PatchedPrior({self.prior!r} on frames {self.event_shape[1:]}, {self.num_patches} patches)"


class SubspacePrior(DiffusionPrior):
    """The prior of ``x = A s``, ``s ~ prior``, for a linear isometry ``A`` (``A^T A = I``).

    A noisy ``x = A s + sigma z`` gives ``A^T x = s + sigma A^T z`` with ``A^T z`` white, and the part
    of ``x`` outside the range of ``A`` is pure noise, so ``E[x_0 | x] = A D(A^T x, sigma)`` exactly.
    Guidance through this denoiser (a vector-Jacobian product) stays in the range of ``A``.

    Parameters
    ----------
    prior : DiffusionPrior
        Event shape ``A.in_shape``.
    lift : operators.LinearOperator
        The isometry ``A``; checked in float64 on the CPU on random inputs (``A^T A s = s``).
    """

    def __init__(self, prior: DiffusionPrior, lift: LinearOperator):
        _check_prior(prior, "prior")
        if not isinstance(lift, LinearOperator):
            raise TypeError(f"lift must be an operators.LinearOperator, got {type(lift).__name__}")
        if tuple(prior.event_shape) != tuple(lift.in_shape):
            raise ValueError(
                f"the prior's event {tuple(prior.event_shape)} is not lift.in_shape {lift.in_shape}"
            )
        s = torch.randn(3, *lift.in_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        if not torch.allclose(lift.adjoint(lift(s)), s, rtol=1e-6, atol=1e-6 * float(s.abs().max())):
            raise ValueError("lift is not an isometry (A^T A s != s on a random s)")
        self.prior, self.lift = prior, lift
        self.event_shape = tuple(lift.out_shape)
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.dtype, self.device = prior.dtype, prior.device

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        return self.lift(self.prior.denoise(self.lift.adjoint(x), sigma))

    def __repr__(self) -> str:
        return f"SubspacePrior({self.prior!r} lifted to {self.event_shape})"


class SliceStackPrior(DiffusionPrior):
    """A volume whose slices along one axis are independent draws of a 2D prior.

    The volume's event shape is ``(C, D, H, W)``; the slices along ``axis`` (1: ``D``, 2: ``H``, 3:
    ``W``) must have the 2D prior's event shape (e.g. axial slices ``(C, H, W)`` for ``axis=1``). For
    this product prior ``E[x_0 | x]`` is the 2D prior's denoiser applied to each slice, so the volume is
    denoised as one batch of slices (NFE counts volumes, the network sees ``n * slices`` images).

    Parameters
    ----------
    prior : DiffusionPrior
        The 2D prior, event shape ``(C, H', W')``.
    shape : sequence of int
        The volume's event shape ``(C, D, H, W)``.
    axis : int
        The axis of the event that indexes the slices.
    """

    def __init__(self, prior: DiffusionPrior, shape: Sequence[int], axis: int = 1):
        _check_prior(prior, "prior")
        shape = as_shape(shape, "shape")
        if len(shape) != 4 or axis not in (1, 2, 3):
            raise ValueError(f"shape must be (C, D, H, W) and axis 1, 2 or 3, got {shape} and {axis!r}")
        slice_shape = tuple(n for i, n in enumerate(shape) if i != axis)
        if slice_shape != tuple(prior.event_shape):
            raise ValueError(
                f"the slices of a {shape} volume along axis {axis} are {slice_shape}, but the 2D prior's "
                f"event shape is {tuple(prior.event_shape)}"
            )
        self.prior, self.axis, self.event_shape = prior, axis, shape
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.dtype, self.device = prior.dtype, prior.device

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        n, count = x.shape[0], self.event_shape[self.axis]
        moved = x.movedim(self.axis + 1, 1)  # (n, slices, *slice_shape)
        per_slice = sigma_tensor(sigma, x).reshape(n).repeat_interleave(count)
        out = self.prior.denoise(moved.reshape(n * count, *self.prior.event_shape), per_slice)
        return out.reshape(moved.shape).movedim(1, self.axis + 1)

    def location_scale(self) -> tuple[Tensor, float | Tensor]:
        """The 2D prior's, tiled along ``axis``: exact for the product prior (no network calls on volumes)."""
        center, scale = self.prior.location_scale()
        tile = lambda t: t.unsqueeze(self.axis).expand(self.event_shape)  # noqa: E731
        return tile(center), tile(scale) if isinstance(scale, Tensor) and scale.dim() else scale

    def __repr__(self) -> str:
        return f"SliceStackPrior({self.prior!r} along axis {self.axis} of {self.event_shape})"
