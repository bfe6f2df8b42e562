"""Measurement operators and noise models for inverse problems ``y = A(x) + noise``.

Operators map batches ``(n, *in_shape) -> (n, *out_shape)`` and are differentiable in torch;
linear operators carry a tested adjoint. Noise models give batched ``log_prob(y, Ax) -> (n,)``.
"""

from operators.base import (
    SVD,
    Adjoint,
    Composition,
    Function,
    Identity,
    LinearComposition,
    LinearOperator,
    Matrix,
    Operator,
    Scaled,
    Sum,
)
from operators.imaging import BandlimitedUpsample, Blur, Downsample, Inpainting
from operators.mri import MRI, birdcage_maps
from operators.noise import (
    GaussianNoise,
    LaplaceNoise,
    NoiseModel,
    PoissonNoise,
    PyroLikelihood,
    StudentTNoise,
)
from operators.nonlinear import PhaseRetrieval
from operators.radon import Radon
from operators.testing import adjoint_gap, check_adjoint
from operators.ultrasound import HazeLink
from operators.volume import SliceWise

__all__ = [
    "SVD",
    "Adjoint",
    "BandlimitedUpsample",
    "Blur",
    "Composition",
    "Downsample",
    "Function",
    "GaussianNoise",
    "HazeLink",
    "Identity",
    "Inpainting",
    "LaplaceNoise",
    "LinearComposition",
    "LinearOperator",
    "MRI",
    "Matrix",
    "NoiseModel",
    "Operator",
    "PhaseRetrieval",
    "PoissonNoise",
    "PyroLikelihood",
    "Radon",
    "Scaled",
    "SliceWise",
    "StudentTNoise",
    "Sum",
    "adjoint_gap",
    "birdcage_maps",
    "check_adjoint",
]
