"""A forward model and likelihood in Python, for ``detector.toml``: a blurring detector that
saturates, ``z = 20 (1 - exp(-3 blur(x)))``, read out as Poisson counts ``y ~ Poisson(z)``, the
model of ``examples/04_pyro_forward_model.ipynb``.

``posterior run`` imports this module from the job file's folder: ``operator.function =
"detector:make_operator"`` and ``noise.model = "detector:likelihood"``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

import operators as ops

SHAPE = (1, 16, 16)  # the digits prior's images
GAIN, SATURATION = 20.0, 3.0  # expected counts at saturation; how fast the detector saturates


def make_operator() -> ops.Operator:
    """The detector ``x (n, 1, 16, 16) -> z (n, 1, 16, 16)``, expected counts per pixel."""
    blur = ops.Blur.gaussian(SHAPE, std=1.0)
    return ops.Function(lambda x: GAIN * (1 - torch.exp(-SATURATION * blur(x).clamp_min(0))), in_shape=SHAPE)


def likelihood(z: Tensor) -> Tensor:
    """Poisson counts of ``z``, shape ``(n, 1, 16, 16)``, at the observed site ``y``."""
    return pyro.sample("y", dist.Poisson(z.clamp_min(1e-6)).to_event(3))
