"""Operator algebra: forward models ``x -> A(x)`` with declared shapes.

Every operator maps a batch ``x`` of shape ``(n, *in_shape)`` to ``(n, *out_shape)`` and is
differentiable in torch. Linear operators add the adjoint (with respect to the real inner product
``<u, v> = sum(u * v)``), the Gram map ``A^T A``, composition ``A @ B``, sums, scalar multiples, a
dense matrix for small problems, a pseudo-inverse, and an SVD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .checks import Shape, as_float, as_shape, short


def like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` on the device of ``x``, in its dtype when ``t`` is floating point (complex kept complex)."""
    if t.is_complex():
        dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    elif t.is_floating_point():
        dtype = x.dtype
    else:
        dtype = t.dtype
    return t.to(device=x.device, dtype=dtype)


def binary_mask(mask: Tensor, name: str) -> Tensor:
    """``mask`` as bool; a ``ValueError`` naming ``name`` if it is not binary or has no ``True`` entry."""
    if not isinstance(mask, Tensor):
        mask = torch.as_tensor(mask)
    if mask.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"{name} must be boolean or contain only 0 and 1, got values other than 0/1")
        mask = mask != 0
    if not mask.any():
        raise ValueError(f"{name} observes nothing: it has no True (or 1) entry")
    return mask


def check_batch(x: Tensor, shape: Shape, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` has shape ``(n, *shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, expected (n, *{shape}) = (n, {', '.join(map(str, shape))})"
        )


class Operator:
    """A differentiable forward model ``A: (n, *in_shape) -> (n, *out_shape)``.

    Subclasses implement :meth:`forward`; calling the operator checks the input shape first.
    """

    in_shape: Shape
    out_shape: Shape

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int]):
        self.in_shape = as_shape(in_shape, "in_shape")
        self.out_shape = as_shape(out_shape, "out_shape")

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def validate(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        """Check the operator once on a probe input of ``dtype`` on ``device``; raises on failure.

        Built-in operators need no check; :class:`Function` checks the user's function.
        """

    def __call__(self, x: Tensor) -> Tensor:
        """Apply the operator.

        Parameters
        ----------
        x : Tensor, shape (n, *in_shape)

        Returns
        -------
        Tensor, shape (n, *out_shape)
        """
        check_batch(x, self.in_shape, "x")
        return self.forward(x)

    @staticmethod
    def from_function(
        fn: Callable[[Tensor], Tensor], in_shape: Sequence[int], out_shape: Sequence[int] | None = None
    ) -> Function:
        """Wrap any differentiable batched torch function (see :class:`Function`)."""
        return Function(fn, in_shape, out_shape)

    def __matmul__(self, other: Operator) -> Operator:
        if not isinstance(other, Operator):
            return NotImplemented
        return Composition(self, other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape})"


class Function(Operator):
    """Any differentiable torch function ``fn(x)`` on batches, with declared shapes.

    Before first use (or when an ``InverseProblem`` is built with it), :meth:`validate` evaluates
    ``fn`` once on a probe batch and checks that it returns a real floating-point tensor of shape
    ``(n, *out_shape)`` that autograd can differentiate with respect to ``x``.

    Parameters
    ----------
    fn : callable
        Maps ``(n, *in_shape)`` to ``(n, *out_shape)``; must broadcast over the batch.
    in_shape : tuple of int
    out_shape : tuple of int, optional
        Inferred from one evaluation on a zero input when omitted.
    """

    def __init__(
        self, fn: Callable[[Tensor], Tensor], in_shape: Sequence[int], out_shape: Sequence[int] | None = None
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        in_shape = as_shape(in_shape, "in_shape")
        if out_shape is None:
            out_shape = self._infer_out_shape(fn, in_shape)
        super().__init__(in_shape, out_shape)
        self.fn = fn
        self._validated = False

    @staticmethod
    def _infer_out_shape(fn: Callable[[Tensor], Tensor], in_shape: Shape) -> Shape:
        """Evaluate ``fn`` once on zeros (float32, else float64 for functions holding float64 tensors)."""
        for dtype in (torch.float32, torch.float64):
            try:
                with torch.no_grad():
                    return tuple(fn(torch.zeros(1, *in_shape, dtype=dtype)).shape[1:])
            except RuntimeError:
                continue
        raise ValueError("could not infer out_shape by evaluating fn on zeros; pass out_shape")

    def validate(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        """Check ``fn`` once on a probe batch ``x`` of shape ``(2, *in_shape)`` (seeded normal draws).

        Raises ``TypeError`` unless ``fn(x)`` is a real floating-point tensor and ``ValueError``
        unless it has shape ``(2, *out_shape)`` and depends differentiably on ``x``.
        """
        if self._validated:
            return
        name = f"Function fn={getattr(self.fn, '__qualname__', None) or short(self.fn)}"
        dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        probe = torch.randn(2, *self.in_shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
        x = probe.to(device).requires_grad_(True)
        with torch.enable_grad():
            y = self.fn(x)
            if not isinstance(y, Tensor):
                raise TypeError(f"{name}: fn returned {type(y).__name__}, expected a torch.Tensor")
            if not y.is_floating_point():
                raise TypeError(
                    f"{name}: fn returned dtype {y.dtype} on a {dtype} input, expected a real floating-point tensor"
                )
            if tuple(y.shape) != (2, *self.out_shape):
                raise ValueError(
                    f"{name}: fn returned shape {tuple(y.shape)} on an input of shape {tuple(x.shape)}, "
                    f"expected (2, *out_shape) = {(2, *self.out_shape)}"
                )
            grad = torch.autograd.grad(y.sum(), x, allow_unused=True)[0] if y.requires_grad else None
        if grad is None:
            raise ValueError(
                f"{name}: autograd cannot differentiate fn's output with respect to its input (the output "
                "is detached from x); write fn with differentiable torch operations (no .detach(), .item() "
                "or NumPy)"
            )
        self._validated = True

    def forward(self, x: Tensor) -> Tensor:
        self.validate(x.dtype, x.device)
        y = self.fn(x)
        if tuple(y.shape) != (x.shape[0], *self.out_shape):
            raise ValueError(f"fn returned shape {tuple(y.shape)}, expected {(x.shape[0], *self.out_shape)}")
        return y


class Composition(Operator):
    """``(A @ B)(x) = A(B(x))``."""

    def __init__(self, outer: Operator, inner: Operator):
        for name, op in (("outer", outer), ("inner", inner)):
            if not isinstance(op, Operator):
                raise TypeError(f"{name} must be an operators.Operator, got {type(op).__name__}")
        if inner.out_shape != outer.in_shape:
            raise ValueError(
                f"cannot compose: inner out_shape {inner.out_shape} != outer in_shape {outer.in_shape}"
            )
        super().__init__(inner.in_shape, outer.out_shape)
        self.outer, self.inner = outer, inner

    def validate(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        self.inner.validate(dtype, device)
        self.outer.validate(dtype, device)

    def forward(self, x: Tensor) -> Tensor:
        return self.outer.forward(self.inner.forward(x))


@dataclass(frozen=True)
class SVD:
    """Thin singular value decomposition ``A = U diag(s) V^T`` as maps.

    ``s`` has shape ``(r,)`` (positive, descending); ``u(z)`` maps ``(n, r) -> (n, *out_shape)``,
    ``ut(y)`` maps ``(n, *out_shape) -> (n, r)``, ``v(z)`` maps ``(n, r) -> (n, *in_shape)`` and
    ``vt(x)`` maps ``(n, *in_shape) -> (n, r)``. The columns of U and V are orthonormal, so
    ``x - v(vt(x))`` is the component of ``x`` in the null space of ``A``.
    """

    s: Tensor
    u: Callable[[Tensor], Tensor]
    ut: Callable[[Tensor], Tensor]
    v: Callable[[Tensor], Tensor]
    vt: Callable[[Tensor], Tensor]


def dense_svd(matrix: Tensor, in_shape: Shape, out_shape: Shape, rtol: float | None = None) -> SVD:
    """SVD maps of a dense ``(prod(out_shape), prod(in_shape))`` matrix, dropping singular values below
    ``rtol * s_max`` (default ``max(m, d) * eps`` of the matrix's dtype, as ``numpy.linalg.pinv`` does:
    round-off singular values must not be inverted)."""
    if rtol is None:
        rtol = max(matrix.shape) * torch.finfo(matrix.dtype).eps
    U, s, Vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = s > rtol * s.max() if s.numel() else s > 0
    U, s, Vh = U[:, keep], s[keep], Vh[keep]
    return SVD(
        s=s,
        u=lambda z: (z @ like(U, z).T).reshape(z.shape[0], *out_shape),
        ut=lambda y: y.reshape(y.shape[0], -1) @ like(U, y),
        v=lambda z: (z @ like(Vh, z)).reshape(z.shape[0], *in_shape),
        vt=lambda x: x.reshape(x.shape[0], -1) @ like(Vh, x).T,
    )


class LinearOperator(Operator):
    """A linear operator with an adjoint.

    Subclasses implement :meth:`forward` and :meth:`adjoint`; they may override :meth:`svd` and
    :meth:`pinv` where a closed form is cheap. The adjoint is with respect to the real inner
    product: ``sum(A(x) * y) == sum(x * A.adjoint(y))`` (the adjoint test in the test suite).
    """

    def adjoint(self, y: Tensor) -> Tensor:
        """Apply ``A^T``: ``(n, *out_shape) -> (n, *in_shape)``."""
        raise NotImplementedError

    def adjoint_checked(self, y: Tensor) -> Tensor:
        check_batch(y, self.out_shape, "y")
        return self.adjoint(y)

    @property
    def T(self) -> LinearOperator:
        """The adjoint operator ``A^T`` as an operator."""
        return Adjoint(self)

    def gram(self, x: Tensor) -> Tensor:
        """``A^T A x``, shape ``(n, *in_shape)``."""
        return self.adjoint(self(x))

    def to_matrix(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Tensor:
        """Dense matrix of shape ``(prod(out_shape), prod(in_shape))``; for small problems and tests."""
        d = math.prod(self.in_shape)
        basis = torch.eye(d, dtype=dtype, device=device).reshape(d, *self.in_shape)
        return self.forward(basis).reshape(d, -1).T.contiguous()

    def svd(self) -> SVD:
        """Thin SVD; the default builds the dense matrix, so it is meant for small operators."""
        return dense_svd(self.to_matrix(), self.in_shape, self.out_shape)

    def pinv(self, y: Tensor, *, steps: int = 100, tol: float = 1e-10) -> Tensor:
        """Minimum-norm least-squares solution ``A^+ y`` by conjugate gradients on ``A^T A x = A^T y``.

        Starting from zero, CG stays in the row space of ``A``, so it converges to the minimum-norm
        solution. Subclasses with a closed form override this.

        Parameters
        ----------
        y : Tensor, shape (n, *out_shape)

        Returns
        -------
        Tensor, shape (n, *in_shape)
        """
        return conjugate_gradient(self.gram, self.adjoint_checked(y), None, steps, tol)[0]

    # -- algebra --------------------------------------------------------------------------------
    def __matmul__(self, other: Operator) -> Operator:
        if isinstance(other, LinearOperator):
            return LinearComposition(self, other)
        return super().__matmul__(other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Sum(self, other)

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Sum(self, Scaled(other, -1.0))

    def __mul__(self, scalar: float) -> LinearOperator:
        if isinstance(scalar, Tensor) and scalar.numel() == 1:
            scalar = float(scalar)
        if isinstance(scalar, bool) or not isinstance(scalar, int | float):
            return NotImplemented
        return Scaled(self, scalar)

    __rmul__ = __mul__

    def __neg__(self) -> LinearOperator:
        return Scaled(self, -1.0)


class Adjoint(LinearOperator):
    """``A^T`` as an operator; its adjoint is ``A`` again."""

    def __init__(self, op: LinearOperator):
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be an operators.LinearOperator, got {type(op).__name__}")
        super().__init__(op.out_shape, op.in_shape)
        self.op = op

    def forward(self, y: Tensor) -> Tensor:
        return self.op.adjoint(y)

    def adjoint(self, x: Tensor) -> Tensor:
        return self.op.forward(x)

    @property
    def T(self) -> LinearOperator:
        return self.op


class LinearComposition(Composition, LinearOperator):
    """``(A @ B)(x) = A(B(x))`` of linear operators, adjoint ``B^T(A^T(y))``."""

    def adjoint(self, y: Tensor) -> Tensor:
        return self.inner.adjoint(self.outer.adjoint(y))


class Sum(LinearOperator):
    """``(A + B)(x) = A(x) + B(x)``."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        for name, op in (("a", a), ("b", b)):
            if not isinstance(op, LinearOperator):
                raise TypeError(f"{name} must be an operators.LinearOperator, got {type(op).__name__}")
        if (a.in_shape, a.out_shape) != (b.in_shape, b.out_shape):
            raise ValueError(
                f"cannot add operators with shapes {a.in_shape}->{a.out_shape} and {b.in_shape}->{b.out_shape}"
            )
        super().__init__(a.in_shape, a.out_shape)
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        return self.a.forward(x) + self.b.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.a.adjoint(y) + self.b.adjoint(y)


class Scaled(LinearOperator):
    """``(c A)(x) = c A(x)`` for a real scalar ``c``."""

    def __init__(self, op: LinearOperator, scale: float):
        if not isinstance(op, LinearOperator):
            raise TypeError(f"op must be an operators.LinearOperator, got {type(op).__name__}")
        super().__init__(op.in_shape, op.out_shape)
        self.op, self.scale = op, as_float(scale, "scale")

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.op.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.scale * self.op.adjoint(y)


class Identity(LinearOperator):
    """The identity on ``shape`` (denoising problems)."""

    def __init__(self, shape: int | Sequence[int]):
        shape = as_shape(shape, "shape")
        super().__init__(shape, shape)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def adjoint(self, y: Tensor) -> Tensor:
        return y

    def pinv(self, y: Tensor, **_) -> Tensor:
        check_batch(y, self.out_shape, "y")
        return y


class Matrix(LinearOperator):
    """A dense matrix ``M`` of shape ``(m, d)`` acting on flattened inputs, with an exact SVD.

    Parameters
    ----------
    matrix : Tensor, shape (m, d)
    in_shape : tuple of int, optional
        Shape of one input, ``prod(in_shape) == d``; defaults to ``(d,)``.
    out_shape : tuple of int, optional
        Shape of one output, ``prod(out_shape) == m``; defaults to ``(m,)``.
    """

    _cached = ("_svd",)  # filled on use: not part of what the operator is (posterior fingerprints)

    def __init__(
        self, matrix: Tensor, in_shape: Sequence[int] | None = None, out_shape: Sequence[int] | None = None
    ):
        if not isinstance(matrix, Tensor):
            raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
        if matrix.dim() != 2 or matrix.numel() == 0:
            raise ValueError(f"matrix must be a non-empty 2-D tensor (m, d), got shape {tuple(matrix.shape)}")
        if not matrix.is_floating_point():
            raise TypeError(f"matrix must be a real floating-point tensor, got dtype {matrix.dtype}")
        if not torch.isfinite(matrix).all():
            raise ValueError("matrix contains NaN or inf")
        m, d = matrix.shape
        in_shape = as_shape(in_shape if in_shape is not None else (d,), "in_shape")
        out_shape = as_shape(out_shape if out_shape is not None else (m,), "out_shape")
        if math.prod(in_shape) != d or math.prod(out_shape) != m:
            raise ValueError(
                f"matrix of shape {(m, d)} does not fit in_shape {in_shape} and out_shape {out_shape}"
            )
        super().__init__(in_shape, out_shape)
        self.matrix = matrix
        self._svd: SVD | None = None

    def forward(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ like(self.matrix, x).T).reshape(x.shape[0], *self.out_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        return (y.reshape(y.shape[0], -1) @ like(self.matrix, y)).reshape(y.shape[0], *self.in_shape)

    def to_matrix(
        self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> Tensor:
        return self.matrix.to(dtype=dtype, device=device if device is not None else self.matrix.device)

    def svd(self) -> SVD:
        if self._svd is None:
            self._svd = dense_svd(self.matrix, self.in_shape, self.out_shape)
        return self._svd

    def pinv(self, y: Tensor, **_) -> Tensor:
        check_batch(y, self.out_shape, "y")
        svd = self.svd()
        return svd.v(svd.ut(y) / like(svd.s, y))


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor], b: Tensor, x: Tensor | None, steps: int, tol: float = 1e-10
) -> tuple[Tensor, int]:
    """Conjugate gradients on ``M x = b`` for a symmetric positive (semi-)definite ``M`` given as
    ``apply(x) = M x``, one system per row of ``b`` (shape ``(n, ...)``), started at ``x`` (``None``:
    zero, which saves one product).

    Runs ``steps`` iterations (one product with ``M`` each, plus one for the starting residual), or
    fewer once every row's residual is below ``tol`` times its initial norm. Returns the solution and
    the iterations run."""
    if x is None:
        x, r = torch.zeros_like(b), b.clone()
    else:
        r = b - apply(x)
    p = r.clone()
    dims = tuple(range(1, b.dim()))
    tiny = torch.finfo(b.dtype).tiny
    rs = (r * r).sum(dims, keepdim=True)
    stop = tol**2 * rs.clamp_min(tiny)
    for done in range(steps):
        if bool((rs <= stop).all()):
            return x, done
        Mp = apply(p)
        alpha = rs / (p * Mp).sum(dims, keepdim=True).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * Mp
        rs_new = (r * r).sum(dims, keepdim=True)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return x, steps
