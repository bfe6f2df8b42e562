"""Ultrasound dehazing's measurement link: mu-law companded tissue and haze RF to companded hazy RF.

Beamformed RF is additive, ``y = x + gamma h`` (tissue echoes plus multipath haze, Stevens et al.,
IEEE TMI 2024, arXiv 2307.11204), but networks see mu-law companded RF ``C(u) = sign(u) ln(1 + mu |u|)
/ ln(1 + mu)``. In the companded domain the link is ``C(C^-1(x) + gamma C^-1(h))``: nonlinear and
differentiable, which :class:`HazeLink` writes as an operator on the two sources stacked as channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Operator
from .checks import as_float, as_shape


def compand(x: Tensor, mu: float = 255.0) -> Tensor:
    """Mu-law compression ``C(u) = sign(u) ln(1 + mu |u|) / ln(1 + mu)``; maps [-1, 1] onto itself."""
    return torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)


def expand(x: Tensor, mu: float = 255.0) -> Tensor:
    """Exact inverse of :func:`compand`, ``u = sign(c) ((1 + mu)^|c| - 1) / mu``. Not clipped: beyond
    [-1, 1] it grows like ``(1 + mu)^|c|`` (float32 overflows near ``|c| = 16``)."""
    return torch.sign(x) * torch.expm1(x.abs() * math.log1p(mu)) / mu


def compose(tissue: Tensor, haze: Tensor, gamma: float = 1.0, mu: float = 255.0, clip: bool = True) -> Tensor:
    """Companded hazy RF ``C(C^-1(tissue) + gamma C^-1(haze))``, the linear sum clipped to [-1, 1] if
    ``clip`` (receiver saturation). Any matching shapes."""
    y = expand(tissue, mu) + gamma * expand(haze, mu)
    return compand(y.clamp(-1.0, 1.0) if clip else y, mu)


class HazeLink(Operator):
    """``(x, h) -> C(C^-1(x) + gamma C^-1(h))`` on the sources stacked as channels: ``(2C, H, W) -> (C, H, W)``.

    The sources are clipped to [-1, 1] before expansion, so noisy states far outside the data range
    neither overflow nor pull the guidance (their gradient is zero there); the sum is not clipped,
    so the link stays differentiable wherever the sources are in range.

    Parameters
    ----------
    shape : tuple of int
        Shape of one source, ``(C, H, W)``.
    gamma : float
        Haze weight (> 0): the dehazing strength of Stevens et al.; larger values attribute more of
        the measurement to haze.
    mu : float
        Mu-law parameter (255 as in the paper).
    """

    def __init__(self, shape: Sequence[int], gamma: float = 1.0, mu: float = 255.0):
        shape = as_shape(shape, "shape")
        gamma, mu = as_float(gamma, "gamma", gt=0), as_float(mu, "mu", gt=0)
        super().__init__((2 * shape[0], *shape[1:]), shape)
        self.gamma, self.mu = gamma, mu

    def forward(self, z: Tensor) -> Tensor:
        tissue, haze = z.clamp(-1.0, 1.0).chunk(2, dim=1)
        return compose(tissue, haze, self.gamma, self.mu, clip=False)
