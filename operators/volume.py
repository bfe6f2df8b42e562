"""Volumes measured slice by slice: a 2D linear operator applied to every slice of a 3D volume.

Parallel-beam CT of a volume with the rotation axis along ``z`` is exactly this (each axial slice is
projected on its own detector row), and so is Cartesian MRI with a 2D k-space mask per slice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LinearOperator


class SliceWise(LinearOperator):
    """A 2D linear operator applied to each of the ``depth`` slices of a volume.

    ``(n, C, depth, H, W) -> (n, depth, *op.out_shape)`` for an operator ``op`` of ``in_shape (C, H, W)``;
    the adjoint applies ``op``'s adjoint slice by slice.

    Parameters
    ----------
    op : LinearOperator
        The operator of one slice, ``in_shape`` of three dimensions ``(C, H, W)``.
    depth : int
        Slices along the volume's first spatial axis.
    """

    def __init__(self, op: LinearOperator, depth: int):
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be an operators.LinearOperator, got {type(op).__name__}")
        if len(op.in_shape) != 3:
            raise ValueError(f"op must act on (C, H, W) slices, got in_shape {op.in_shape}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        C, H, W = op.in_shape
        super().__init__((C, depth, H, W), (depth, *op.out_shape))
        self.op, self.depth = op, depth

    def validate(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.op.validate(dtype, device)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        slices = x.movedim(2, 1).reshape(n * self.depth, *self.op.in_shape)  # (n * depth, C, H, W)
        return self.op.forward(slices).reshape(n, *self.out_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        n = y.shape[0]
        slices = self.op.adjoint(y.reshape(n * self.depth, *self.op.out_shape))  # (n * depth, C, H, W)
        return slices.reshape(n, self.depth, *self.op.in_shape).movedim(1, 2)

    def __repr__(self) -> str:
        return f"SliceWise({self.op!r}, depth={self.depth})"
