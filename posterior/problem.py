"""An inverse problem: a forward operator, a noise model and an observed measurement."""

from __future__ import annotations

import torch
from torch import Tensor

from operators import GaussianNoise, LinearOperator, NoiseModel, Operator
from operators.base import check_batch


class InverseProblem:
    """The likelihood ``p(y | x) = noise(y | operator(x))`` of an observed ``y``.

    Parameters
    ----------
    operator : operators.Operator
        Forward model ``(n, *in_shape) -> (n, *out_shape)``.
    noise : operators.NoiseModel
        Measurement noise model (likelihood).
    y : Tensor, shape out_shape, or (n, *out_shape) for a batch of ``n`` measurements
        The observation. A single ``y`` is shared by every sample ``x``; a batch pairs ``y[i]`` with
        ``x[i]`` (many problems at once). Validated at construction: shape against
        ``operator.out_shape``, a floating dtype, finite values, and the noise model's support. The
        noise model's tensor parameters must broadcast to ``operator.out_shape``, and a user
        :class:`operators.Function` is checked once on a probe input of ``y``'s dtype and device.

    Attributes
    ----------
    is_linear_gaussian : bool
        True for a linear operator with Gaussian noise: samplers may use closed forms and the SVD.
    """

    def __init__(self, operator: Operator, noise: NoiseModel, y: Tensor):
        if not isinstance(operator, Operator):
            raise TypeError(f"operator must be an operators.Operator, got {type(operator).__name__}")
        if not isinstance(noise, NoiseModel):
            raise TypeError(f"noise must be an operators.NoiseModel, got {type(noise).__name__}")
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if not y.is_floating_point():
            raise TypeError(f"y has dtype {y.dtype}, expected a floating-point dtype (float32 or float64)")
        if tuple(y.shape) != operator.out_shape:
            try:
                check_batch(y, operator.out_shape, "y")
                if y.shape[0] == 0:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"y has shape {tuple(y.shape)}, expected operator.out_shape {operator.out_shape} "
                    f"or (n, *{operator.out_shape}) with n >= 1"
                ) from None
        bad = int((~torch.isfinite(y)).sum())
        if bad:
            raise ValueError(f"y contains NaN or inf ({bad} of {y.numel()} entries); expected finite values")
        noise.check_out_shape(operator.out_shape)
        noise.check_y(y)
        operator.validate(y.dtype, y.device)
        self.operator, self.noise, self.y = operator, noise, y

    @property
    def is_linear_gaussian(self) -> bool:
        return isinstance(self.operator, LinearOperator) and isinstance(self.noise, GaussianNoise)

    @property
    def batched(self) -> bool:
        """Whether ``y`` holds a batch of measurements, one per sample."""
        return tuple(self.y.shape) != self.operator.out_shape

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.operator.in_shape

    def check_x(self, x: Tensor) -> None:
        """Raise a clear error when ``x`` does not fit this problem (shape, dtype, device)."""
        check_batch(x, self.operator.in_shape, "x")
        if x.dtype != self.y.dtype:
            raise TypeError(f"x has dtype {x.dtype} but y has dtype {self.y.dtype}; use one dtype")
        if x.device != self.y.device:
            raise ValueError(
                f"x is on device {x.device} but y is on {self.y.device}; move both to one device"
            )
        if self.batched and x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has batch size {x.shape[0]} but y holds {self.y.shape[0]} measurements")

    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(y | x)`` for each sample.

        Parameters
        ----------
        x : Tensor, shape (n, *operator.in_shape)

        Returns
        -------
        Tensor, shape (n,)
        """
        self.check_x(x)
        return self.noise.log_prob(self.y, self.operator(x))

    def grad_log_likelihood(self, x: Tensor) -> Tensor:
        """``grad_x log p(y | x)`` by autograd, shape ``(n, *operator.in_shape)``."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_likelihood(x).sum(), x)
        return grad

    def __repr__(self) -> str:
        return f"InverseProblem({self.operator!r}, {self.noise!r}, y of shape {tuple(self.y.shape)})"
