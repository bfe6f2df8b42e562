"""Exact analytic priors: Gaussian mixtures with closed-form denoisers, scores and posteriors.

A mixture ``p_0(x) = sum_i w_i N(x; m_i, Sigma_i)`` noised in the variance-exploding convention
``x_sigma = x0 + sigma * eps`` stays a mixture, with components ``N(m_i, C_i)``,
``C_i = Sigma_i + sigma^2 I``. Every quantity a sampler needs is then exact:

* responsibilities ``r_i(x) = softmax_i[log w_i + log N(x; m_i, C_i)]`` (logsumexp),
* score ``grad log p_sigma(x) = -sum_i r_i C_i^{-1} (x - m_i)``,
* Tweedie's denoiser ``E[x0 | x_sigma = x] = sum_i r_i [m_i + Sigma_i C_i^{-1} (x - m_i)]``,
* under ``y = A x0 + n``, ``n ~ N(0, R)`` with ``R`` diagonal, the posterior is again a mixture with
  ``S_i = R + A Sigma_i A^T``, gain ``K_i = Sigma_i A^T S_i^{-1}``, covariance ``Sigma_i - K_i A Sigma_i``,
  mean ``m_i + K_i (y - A m_i)`` and weights ``w_i N(y; A m_i, S_i) / p(y)``.

Each covariance is kept by its eigendecomposition ``Sigma_i = Q_i diag(lambda_i) Q_i^T`` (``Q_i``
omitted for diagonal and isotropic covariances), so ``C_i`` at any ``sigma``, even one per sample,
costs no new factorisation: its eigenvalues are ``lambda_i + sigma^2`` with the same ``Q_i``.
Full covariances are decomposed lazily, on first use. No explicit inverse is formed.

Cost. For isotropic and diagonal covariances, and for full covariances with one *shared* eigenbasis
``Q`` (``Sigma_i = Q diag(lambda_i) Q^T``, the form of the exact posterior of an isotropic mixture
under one noise level, see :meth:`GaussianMixture.posterior`), all K components are evaluated at once
with matrix products, in O(n K d) (plus O(n d^2) to rotate ``x`` into the shared basis once, or
O(n d p) when the covariances are isotropic outside ``p <= d / 2`` shared directions):
``sum_j (x_j - m_ij)^2 / e_ij = (x^2) @ (1/e)^T - 2 x @ (m/e)^T + sum_j m_ij^2 / e_ij``, with ``x``
and the means first centred at the mixture mean and the component algebra done in float64 (also for
float32 priors), against cancellation. Other full covariances cost O(n K d^2), one component at a time.

The benchmark mixtures (:meth:`GaussianMixture.grid`, :meth:`GaussianMixture.random`) document
their recipes; ``grid`` is the 25-mode benchmark of MCGdiff (Cardoso et al. 2023, arXiv:2308.07983).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators.checks import as_float, as_int, as_seed, as_shape, check_less
from posterior.priors.base import DiffusionPrior
from posterior.utils import make_generator

__all__ = ["Gaussian", "GaussianMixture"]

_LOG_2PI = math.log(2 * math.pi)


def _shape_str(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _real_tensor(value: float | Tensor, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``value`` as a real tensor of ``dtype`` on ``device``; a ``TypeError`` for bool, complex or text."""
    try:
        t = torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a real number or tensor, got {type(value).__name__}") from None
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be a real number or tensor, got dtype {t.dtype}")
    return t.to(dtype)


class GaussianMixture(DiffusionPrior):
    """A Gaussian mixture prior ``sum_i w_i N(m_i, Sigma_i)`` with exact diffusion quantities.

    Parameters
    ----------
    means : Tensor, shape (K, *event_shape)
        Component means; their dtype (float32 or float64) and device are the prior's.
        ``event_shape`` may be ``(d,)`` or image-like, e.g. ``(1, 8, 8)``; internally flattened to ``d``.
    weights : Tensor, shape (K,)
        Positive component weights; normalised to sum to one.
    covariances : float or Tensor
        One of: a float (the same isotropic variance for every component); shape ``(K,)``
        (isotropic variance per component); ``(K, d)`` or ``(K, *event_shape)`` (diagonal);
        ``(K, d, d)`` (full, symmetric positive definite).
    sigma_min, sigma_max : float, optional
        Default range of noise levels for :meth:`sample` with ``steps``. Analytic priors are exact at
        every ``sigma``; these only define the default reverse-diffusion grid. Defaults: ``sigma_min =
        1e-3`` and ``sigma_max = 100 (1 + s)``, with ``s = sqrt(max_i (|m_i|^2 + tr Sigma_i) / d)`` the
        largest per-coordinate RMS distance of a component from the origin, so that ``N(0, sigma_max^2 I)``
        is close to the noised prior.

    Notes
    -----
    ``sigma`` arguments are a float, a 0-d tensor or a tensor of shape ``(n,)`` (one level per sample).
    ``log_prob``, ``responsibilities`` and ``score`` accept ``sigma = 0`` (the prior itself);
    ``denoise`` requires ``sigma > 0``. Inputs ``x`` must have the prior's dtype and device
    (see :meth:`to`).
    """

    _cached = ("_location_scale", "_eig", "_ref_frame")  # filled on use (fingerprints skip them)
    has_log_prob = True
    has_posterior = True
    _block_elements = 1 << 22  # per-row levels with diagonal covariances: (rows, K, d) blocks this big

    def __init__(
        self,
        means: Tensor,
        weights: Tensor,
        covariances: float | Tensor,
        *,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ):
        if not isinstance(means, Tensor):
            raise TypeError(
                f"means must be a torch.Tensor of shape (K, *event_shape), got {type(means).__name__}"
            )
        if means.dim() < 2 or means.numel() == 0:
            raise ValueError(
                f"means has shape {_shape_str(means.shape)}, expected (K, *event_shape) with K >= 1"
            )
        if means.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"means has dtype {means.dtype}, expected float32 or float64")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means contains NaN or inf")
        k, event_shape = means.shape[0], tuple(means.shape[1:])
        d = math.prod(event_shape)
        dtype, device = means.dtype, means.device

        w = _real_tensor(weights, "weights", dtype, device)
        if w.shape != (k,):
            raise ValueError(f"weights has shape {_shape_str(w.shape)}, expected (K,) = ({k},) like means")
        if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
            raise ValueError(
                f"weights must be finite and > 0, got {w.tolist() if k <= 10 else f'min {float(w.min())}'}"
            )

        cov = _real_tensor(covariances, "covariances", dtype, device)
        if cov.dim() == 0:
            cov = cov.expand(k).clone()
        if tuple(cov.shape) == (k, d, d):
            kind = "full"
            if not bool(torch.isfinite(cov).all()):
                raise ValueError("covariances contains NaN or inf")
            tol = math.sqrt(torch.finfo(dtype).eps) * float(
                cov.abs().amax().clamp_min(torch.finfo(dtype).tiny)
            )
            asym = float((cov - cov.transpose(-1, -2)).abs().amax())
            if asym > tol:
                raise ValueError(f"covariances must be symmetric; max |Sigma - Sigma^T| = {asym:.3g}")
            cov = 0.5 * (cov + cov.transpose(-1, -2))
            _, info = torch.linalg.cholesky_ex(cov.to(torch.float64))
            bad = torch.nonzero(info).flatten().tolist()
            if bad:
                raise ValueError(f"covariances must be positive definite; components {bad[:10]} are not")
        elif tuple(cov.shape) in ((k, d), (k, *event_shape)):
            kind = "diagonal"
            cov = cov.reshape(k, d)
        elif tuple(cov.shape) == (k,):
            kind = "scalar"
        else:
            raise ValueError(
                f"covariances has shape {_shape_str(cov.shape)}, expected a float, (K,) = ({k},), "
                f"(K, d) = ({k}, {d}), (K, *event_shape) = {(k, *event_shape)} or (K, d, d) = ({k}, {d}, {d})"
            )
        if kind != "full" and (not bool(torch.isfinite(cov).all()) or bool((cov <= 0).any())):
            raise ValueError(f"covariances ({kind}) must be finite and > 0, got min {float(cov.min()):.3g}")

        self._init_parts(means.reshape(k, d).clone(), torch.log(w / w.sum()), kind, cov.clone(), event_shape)
        self._set_sigma_range(sigma_min, sigma_max)

    # -- construction helpers ---------------------------------------------------------------------
    def _init_parts(
        self,
        means: Tensor,
        log_weights: Tensor,
        kind: str,
        cov: Tensor,
        event_shape: tuple[int, ...],
        eig: tuple[Tensor | None, Tensor] | None = None,
        basis: Tensor | None = None,
    ) -> None:
        """Internal kinds: ``"scalar"`` (``cov`` (K,)), ``"diagonal"`` (``cov`` (K, d)), ``"full"``
        (``cov`` (K, d, d), eigendecomposed lazily into ``eig``) and ``"shared"`` (full covariances
        ``basis @ diag(cov[i]) @ basis.T`` with one orthogonal ``basis`` (d, d) whose columns are the
        eigenvectors, and ``cov`` (K, d) the eigenvalues)."""
        self._means, self._log_weights, self._kind, self._cov = means, log_weights, kind, cov
        self._basis = basis
        self.event_shape = tuple(event_shape)
        self.dtype, self.device = means.dtype, means.device
        k, d = means.shape
        if kind == "scalar":
            eig = (None, cov[:, None].expand(k, d))
        elif kind == "diagonal":
            eig = (None, cov)
        elif kind == "shared":
            eig = (basis, cov)
        self._eig = eig
        self._ref_frame = None

    @classmethod
    def _from_parts(
        cls, means, log_weights, kind, cov, event_shape, sigma_min, sigma_max, eig=None, basis=None
    ):
        """A mixture from trusted internal parts, skipping validation."""
        obj = cls.__new__(cls)
        obj._init_parts(means, log_weights, kind, cov, event_shape, eig, basis)
        obj.sigma_min, obj.sigma_max = sigma_min, sigma_max
        return obj

    def _set_sigma_range(self, sigma_min: float | None, sigma_max: float | None) -> None:
        if sigma_max is None:
            d = self._means.shape[1]
            second = (self._means.to(torch.float64) ** 2).sum(1) + self._trace().to(torch.float64)
            sigma_max = 100.0 * (1.0 + math.sqrt(float(second.max()) / d))
        sigma_min = 1e-3 if sigma_min is None else as_float(sigma_min, "sigma_min", gt=0)
        sigma_max = as_float(sigma_max, "sigma_max", gt=0)
        check_less(sigma_min, sigma_max, "sigma_min", "sigma_max")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def _trace(self) -> Tensor:
        """``tr Sigma_i``, shape (K,)."""
        if self._kind == "scalar":
            return self._cov * self._means.shape[1]
        if self._kind in ("diagonal", "shared"):
            return self._cov.sum(1)
        return torch.diagonal(self._cov, dim1=-2, dim2=-1).sum(-1)

    def _eigh(self) -> tuple[Tensor | None, Tensor]:
        """``(Q, lambda)``: eigenvectors (K, d, d), one shared basis (d, d) or None; eigenvalues (K, d).
        Full ones are computed once."""
        if self._eig is None:
            lam, q = torch.linalg.eigh(self._cov.to(torch.float64))
            # Round-off can leave tiny negative eigenvalues (e.g. posterior covariances): floor them.
            lam = torch.maximum(lam, torch.finfo(torch.float64).eps * lam.amax(-1, keepdim=True))
            self._eig = (q.to(self.dtype), lam.to(self.dtype))
        return self._eig

    # -- properties -------------------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self._means.shape[0]

    @property
    def means(self) -> Tensor:
        """Component means, shape (K, *event_shape)."""
        return self._means.reshape(self.num_components, *self.event_shape)

    @property
    def weights(self) -> Tensor:
        """Normalised component weights, shape (K,)."""
        return self._log_weights.exp()

    @property
    def log_weights(self) -> Tensor:
        """Normalised log weights, shape (K,)."""
        return self._log_weights

    @property
    def covariance_type(self) -> str:
        """``"scalar"`` (isotropic), ``"diagonal"`` or ``"full"``.

        ``"full"`` covers both dense covariances and covariances stored by one eigenbasis shared by all
        components (as :meth:`posterior` returns for an isotropic prior and one noise level); see
        :attr:`shared_basis`."""
        return "full" if self._kind == "shared" else self._kind

    @property
    def shared_basis(self) -> Tensor | None:
        """For full covariances stored as ``Sigma_i = Q diag(lambda_i) Q^T`` with one orthogonal ``Q``,
        that ``Q`` (shape (d, d), eigenvectors as columns; ``lambda`` is ``covariance_eigenvalues``);
        otherwise None."""
        return self._basis

    @property
    def covariance_eigenvalues(self) -> Tensor:
        """Eigenvalues of each component covariance, shape (K, d) (for dense full covariances computed
        on first use; in the order of :attr:`shared_basis` when there is one)."""
        return self._eigh()[1]

    @property
    def covariances(self) -> Tensor:
        """Component covariances: (K,) scalar, (K, d) diagonal or (K, d, d) full (built on demand
        from the eigenbasis when it is shared)."""
        return self.covariance_matrices() if self._kind == "shared" else self._cov

    def covariance_matrices(self) -> Tensor:
        """Dense component covariances, shape (K, d, d)."""
        if self._kind == "full":
            return self._cov
        q, lam = self._eigh()
        if q is None:
            return torch.diag_embed(lam)
        cov = (q * lam[:, None, :]) @ q.T
        return 0.5 * (cov + cov.transpose(-1, -2))

    # -- checks -----------------------------------------------------------------------------------
    def _flat_x(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        self.check_x(x)
        if x.dtype != self.dtype:
            raise TypeError(
                f"x has dtype {x.dtype} but the prior has dtype {self.dtype}; use prior.to(dtype=...)"
            )
        if x.device != self.device:
            raise ValueError(
                f"x is on device {x.device} but the prior is on {self.device}; use prior.to(device=...)"
            )
        return x.reshape(x.shape[0], -1)

    def _sigma2(self, sigma: float | Tensor, n: int, allow_zero: bool) -> Tensor:
        """``sigma^2`` as shape (n,), validated (finite; > 0, or >= 0 when ``allow_zero``)."""
        s = torch.as_tensor(sigma, dtype=self.dtype, device=self.device)
        if s.dim() == 0:
            s = s.expand(n)
        if s.shape != (n,):
            raise ValueError(f"sigma has shape {_shape_str(s.shape)}, expected a float or shape ({n},)")
        if (
            not bool(torch.isfinite(s).all())
            or bool((s < 0).any())
            or (not allow_zero and bool((s == 0).any()))
        ):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"sigma must be finite and {bound}, got min {float(s.min()):.3g}")
        return s * s

    # -- core -------------------------------------------------------------------------------------
    def _reduce(self, xf: Tensor, s2: Tensor, mode: str | None) -> tuple[Tensor, Tensor | None]:
        """Per-component log densities and, optionally, the responsibility-weighted vector field.

        Returns ``log w_i + log N(x; m_i, C_i)`` of shape (n, K) (float64 except for dense full
        covariances) and, for ``mode`` ``"denoise"`` or ``"score"``, ``sum_i r_i v_i`` of shape (n, d)
        in the prior's dtype, with ``v_i = m_i + Sigma_i C_i^{-1}(x - m_i)`` or ``-C_i^{-1}(x - m_i)``.
        """
        if self._kind == "full":
            return self._reduce_dense(xf, s2, mode)
        return self._reduce_matrix(xf, s2, mode)

    def _frame(self) -> tuple[Tensor, Tensor, tuple | None]:
        """``(ref, mq, split)``: the reference point ``ref`` (the mixture mean, prior's dtype, shape
        (d,)), the means relative to it in the diagonalising coordinates, ``(m_i - ref) Q`` (float64,
        (K, d)), and for a shared basis whose last ``d - p`` eigenvalues are equal within each component
        (e.g. a posterior under ``p < d`` measurements), with ``p <= d / 2``, ``split = (Q_p, mq_p,
        m_perp, c_perp)``: the leading ``p`` eigenvectors (prior's dtype), the means in them, the means'
        parts in their orthogonal complement (float64, (K, d)) and the eigenvalue there (float64, (K,))."""
        if self._ref_frame is None:
            f64 = torch.float64
            means = self._means.to(f64)
            ref = (self._log_weights.to(f64).exp() @ means).to(self.dtype)
            mc = means - ref.to(f64)
            mq, split = mc, None
            if self._basis is not None:
                lam, d = self._cov, self._cov.shape[1]
                varied = torch.nonzero(~(lam == lam[:, -1:]).all(0))
                p = int(varied.max()) + 1 if varied.numel() else 0
                if p <= d // 2:
                    qp = self._basis[:, :p]
                    mqp = mc @ qp.to(f64)
                    split = (qp, mqp, mc - mqp @ qp.to(f64).T, lam[:, -1].to(f64))
                    mq = mqp
                else:
                    mq = mc @ self._basis.to(f64)
            self._ref_frame = (ref, mq, split)
        return self._ref_frame

    def _reduce_matrix(self, xf: Tensor, s2: Tensor, mode: str | None) -> tuple[Tensor, Tensor | None]:
        """:meth:`_reduce` for covariances that are diagonal in one basis (scalar, diagonal, shared):
        all components at once with matrix products, in float64, relative to :meth:`_frame`."""
        f64 = torch.float64
        ref, mq, split = self._frame()
        q = self._basis if split is None else split[0]
        xc = xf - ref
        z = xc if q is None else xc @ q
        lw = self._log_weights.to(f64)
        if split is not None:  # isotropic part in the complement of Q_p, as for scalar covariances
            x_perp = (xc - z @ q.T).to(f64)
            m_perp, c_perp = split[2], split[3]
            e_perp = c_perp + s2.to(f64)[:, None]  # (n, K)
            dist = (x_perp * x_perp).sum(1, keepdim=True) - 2 * (x_perp @ m_perp.T) + (m_perp * m_perp).sum(1)
            d_perp = xf.shape[1] - z.shape[1]
            lw = lw - 0.5 * (dist.clamp_min(0) / e_perp + d_perp * (torch.log(e_perp) + _LOG_2PI))
        z, s2 = z.to(f64), s2.to(f64)
        n, d = z.shape
        if self._kind == "scalar":
            c = self._cov.to(f64)
            e = c + s2[:, None]  # (n, K): eigenvalue of C_i for each row's sigma
            dist = ((z * z).sum(1, keepdim=True) - 2 * (z @ mq.T) + (mq * mq).sum(1)).clamp_min(0)
            logp = lw - 0.5 * (dist / e + d * torch.log(e) + d * _LOG_2PI)
            if mode is None:
                return logp, None
            r = torch.softmax(logp, 1)
            if mode == "denoise":  # z sum_i r_i a_i + sum_i r_i (1 - a_i) m_i, a_i = c_i / e_i
                v = z * (r * c / e).sum(1, keepdim=True) + (r * s2[:, None] / e) @ mq
            else:
                re = r / e
                v = (re @ mq) - z * re.sum(1, keepdim=True)
        else:
            lam = self._cov.to(f64)[:, :d]  # (K, d)
            if n == 0 or bool((s2 == s2[0]).all()):
                logp, v = self._diagonal_one_level(z, s2[0] if n else s2.new_zeros(()), lam, mq, lw, mode)
            else:
                logp, v = self._diagonal_per_row(z, s2, lam, mq, lw, mode)
            if mode is None:
                return logp, None
        v = v.to(self.dtype)
        if q is not None:
            v = v @ q.T
        if split is not None:
            r = torch.softmax(logp, 1)
            if mode == "denoise":
                v_perp = (
                    x_perp * (r * c_perp / e_perp).sum(1, keepdim=True) + (r * s2[:, None] / e_perp) @ m_perp
                )
            else:
                re = r / e_perp
                v_perp = (re @ m_perp) - x_perp * re.sum(1, keepdim=True)
            v = v + v_perp.to(self.dtype)
        if mode == "denoise":
            v = v + ref
        return logp, v

    @staticmethod
    def _diagonal_one_level(z, s2, lam, mq, lw, mode):
        """Diagonal covariances ``lam + s2`` (one level ``s2`` for all rows): O(n K d) matrix products."""
        d = z.shape[1]
        e = lam + s2
        inv = 1.0 / e
        dist = ((z * z) @ inv.T - 2 * (z @ (mq * inv).T) + (mq * mq * inv).sum(1)).clamp_min(0)
        logp = lw - 0.5 * (dist + torch.log(e).sum(1) + d * _LOG_2PI)
        if mode is None:
            return logp, None
        r = torch.softmax(logp, 1)
        if mode == "denoise":
            return logp, z * (r @ (lam * inv)) + r @ (mq * (s2 * inv))
        return logp, r @ (mq * inv) - z * (r @ inv)

    def _diagonal_per_row(self, z, s2, lam, mq, lw, mode):
        """Diagonal covariances ``lam + s2_n`` with one level per row: (rows, K, d) blocks of at most
        ``_block_elements`` entries, O(n K d)."""
        n, d = z.shape
        step = max(1, self._block_elements // max(1, lam.shape[0] * d))
        logps, vs = [], []
        for start in range(0, n, step):
            zc, sc = z[start : start + step], s2[start : start + step, None, None]
            lwc = lw[start : start + step] if lw.dim() == 2 else lw
            diff = zc[:, None, :] - mq  # (c, K, d)
            e = lam + sc
            logp = lwc - 0.5 * ((diff * diff / e).sum(-1) + torch.log(e).sum(-1) + d * _LOG_2PI)
            logps.append(logp)
            if mode is None:
                continue
            r = torch.softmax(logp, 1)
            field = mq + lam / e * diff if mode == "denoise" else -diff / e
            vs.append(torch.einsum("ck,ckd->cd", r, field))
        return torch.cat(logps), (torch.cat(vs) if mode is not None else None)

    def _reduce_dense(self, xf: Tensor, s2: Tensor, mode: str | None) -> tuple[Tensor, Tensor | None]:
        """:meth:`_reduce` for dense full covariances, one component at a time (O(n K d^2)). The
        weighted sum is accumulated with a running max (one pass, O(n d) memory)."""
        q, lam = self._eigh()
        d = xf.shape[1]
        logps = []
        run_max = run_sum = acc = None
        for i in range(self.num_components):
            diff = xf - self._means[i]
            z = diff @ q[i]
            ev = lam[i] + s2[:, None]
            logp = self._log_weights[i] - 0.5 * ((z * z / ev).sum(1) + torch.log(ev).sum(1) + d * _LOG_2PI)
            logps.append(logp)
            if mode is None:
                continue
            u = lam[i] / ev * z if mode == "denoise" else -z / ev
            v = u @ q[i].T
            if mode == "denoise":
                v = v + self._means[i]
            if acc is None:
                run_max, run_sum, acc = logp, torch.ones_like(logp), v
            else:
                new_max = torch.maximum(run_max, logp)
                a, b = torch.exp(run_max - new_max), torch.exp(logp - new_max)
                run_sum = run_sum * a + b
                acc = acc * a[:, None] + b[:, None] * v
                run_max = new_max
        logp = torch.stack(logps, 1)
        return logp, (None if acc is None else acc / run_sum[:, None])

    def log_prob(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Log density of the noised mixture ``p_sigma(x)`` (``sigma = 0``: the prior itself).

        Parameters
        ----------
        x : Tensor, shape (n, *event_shape)
        sigma : float or Tensor of shape (n,), >= 0

        Returns
        -------
        Tensor, shape (n,)
        """
        xf = self._flat_x(x)
        logp, _ = self._reduce(xf, self._sigma2(sigma, xf.shape[0], True), None)
        return torch.logsumexp(logp, 1).to(self.dtype)

    def responsibilities(self, x: Tensor, sigma: float | Tensor = 0.0) -> Tensor:
        """Posterior component probabilities ``r_i(x) = p(component i | x_sigma = x)``.

        Parameters
        ----------
        x : Tensor, shape (n, *event_shape)
        sigma : float or Tensor of shape (n,), >= 0

        Returns
        -------
        Tensor, shape (n, K); rows sum to one.
        """
        xf = self._flat_x(x)
        logp, _ = self._reduce(xf, self._sigma2(sigma, xf.shape[0], True), None)
        return torch.softmax(logp, 1).to(self.dtype)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact Tweedie denoiser ``E[x0 | x_sigma = x] = sum_i r_i [m_i + Sigma_i C_i^{-1} (x - m_i)]``.

        Parameters
        ----------
        x : Tensor, shape (n, *event_shape)
        sigma : float or Tensor of shape (n,), > 0

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        xf = self._flat_x(x)
        _, out = self._reduce(xf, self._sigma2(sigma, xf.shape[0], False), "denoise")
        return out.reshape(x.shape)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Exact score ``grad_x log p_sigma(x) = -sum_i r_i C_i^{-1} (x - m_i)``; accepts ``sigma = 0``.

        Parameters
        ----------
        x : Tensor, shape (n, *event_shape)
        sigma : float or Tensor of shape (n,), >= 0

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        xf = self._flat_x(x)
        _, out = self._reduce(xf, self._sigma2(sigma, xf.shape[0], True), "score")
        return out.reshape(x.shape)

    # -- sampling ---------------------------------------------------------------------------------
    def sample(
        self, n: int, *, seed: int | torch.Generator | None = None, steps: int | None = None, **kwargs
    ) -> Tensor:
        """Draws from the mixture: exact when ``steps`` is None, else by the reverse diffusion.

        Parameters
        ----------
        n : int
            Number of draws.
        seed : int or torch.Generator, optional
        steps : int, optional
            ``None``: exact ancestral draws (component ``k ~ Cat(w)``, then
            ``m_k + Q_k diag(sqrt(lambda_k)) z``). An int: :meth:`DiffusionPrior.sample` with this
            exact denoiser and ``kwargs`` (``method``, ``rho``, ...); a test of the integrator.

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        if steps is not None:
            return super().sample(n, steps=steps, seed=seed, **kwargs)
        unknown = set(kwargs) - {"dtype", "device", "progress"}
        if unknown:
            raise TypeError(f"sample() got {sorted(unknown)}, which apply only with steps=...")
        n = as_int(n, "n", minimum=1)
        gen, gen_device = make_generator(seed, self.device)
        d = self._means.shape[1]
        comp = torch.multinomial(
            self.weights.to(dtype=torch.float64, device=gen_device), n, replacement=True, generator=gen
        )
        z = torch.randn(n, d, generator=gen, dtype=self.dtype, device=gen_device).to(self.device)
        comp = comp.to(self.device)
        q, lam = self._eigh()
        u = lam[comp].sqrt() * z
        if q is not None and q.dim() == 2:  # one shared basis
            u = u @ q.T
        elif q is not None:
            for i in torch.unique(comp).tolist():
                sel = comp == i
                u[sel] = u[sel] @ q[i].T
        x = (self._means[comp] + u).reshape(n, *self.event_shape)
        return x.to(dtype=kwargs.get("dtype") or self.dtype, device=kwargs.get("device") or self.device)

    # -- moments ----------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        """Mixture mean ``sum_i w_i m_i``, shape event_shape."""
        return (self.weights @ self._means).reshape(self.event_shape)

    def smallest_std(self) -> float:
        """The smallest standard deviation of any component along any direction (``sqrt`` of the
        smallest eigenvalue of the component covariances)."""
        return math.sqrt(max(float(self._eigh()[1].min()), 0.0))

    def location_scale(self) -> tuple[Tensor, Tensor]:
        """The mixture mean and each coordinate's standard deviation, exactly, both of shape
        ``event_shape`` (see :meth:`DiffusionPrior.location_scale`)."""
        w = self.weights.to(torch.float64)
        means = self._means.to(torch.float64)
        if self._kind == "full":
            within = torch.einsum("k,kii->i", w, self._cov.to(torch.float64))
        else:
            within = w @ self._eigh()[1].to(torch.float64)
            if self._basis is not None:  # diag(Q diag(v) Q^T) = (Q * Q) v
                within = (self._basis.to(torch.float64) ** 2) @ within
        between = w @ (means - w @ means) ** 2
        std = (within + between).sqrt().reshape(self.event_shape)
        return self.mean(), std.to(dtype=self.dtype)

    def covariance(self) -> Tensor:
        """Mixture covariance ``sum_i w_i [Sigma_i + (m_i - mu)(m_i - mu)^T]``, shape (d, d)."""
        w = self.weights
        centred = self._means - w @ self._means
        between = (centred * w[:, None]).T @ centred
        if self._kind == "full":
            within = torch.einsum("k,kij->ij", w, self._cov)
        elif self._basis is not None:
            q = self._basis
            within = (q * (w @ self._cov)) @ q.T
            within = 0.5 * (within + within.T)
        else:
            within = torch.diag(w @ self._eigh()[1])
        return within + between

    # -- transformations --------------------------------------------------------------------------
    def noised(self, sigma: float | Tensor) -> GaussianMixture:
        """The noised prior ``p_sigma`` as a mixture: covariances ``Sigma_i + sigma^2 I``.

        Parameters
        ----------
        sigma : float or 0-d Tensor, >= 0

        Returns
        -------
        GaussianMixture with the same means, weights and event_shape.
        """
        s2 = self._sigma2(sigma, 1, True)[0]
        if self._kind == "full":
            d = self._means.shape[1]
            cov = self._cov + s2 * torch.eye(d, dtype=self.dtype, device=self.device)
            q, lam = self._eigh()
            eig = (q, lam + s2)
        else:  # scalar, diagonal, or eigenvalues in the shared basis
            cov, eig = self._cov + s2, None
        return self._from_parts(
            self._means,
            self._log_weights,
            self._kind,
            cov,
            self.event_shape,
            self.sigma_min,
            self.sigma_max,
            eig,
            self._basis,
        )

    def _condition(self, problem) -> tuple[GaussianMixture, Tensor]:
        """Exact posterior mixture and log evidence under a linear-Gaussian problem (computed in float64)."""
        if not getattr(problem, "is_linear_gaussian", False):
            raise ValueError(
                "problem must be linear-Gaussian (a LinearOperator with GaussianNoise) for the exact "
                f"posterior, got {problem!r}"
            )
        if getattr(problem, "batched", False):
            raise ValueError(
                f"problem.y has shape {_shape_str(problem.y.shape)}, a batch of measurements; the exact "
                f"posterior needs a single y of shape operator.out_shape {problem.operator.out_shape}"
            )
        op = problem.operator
        if tuple(op.in_shape) != self.event_shape:
            raise ValueError(
                f"problem.operator.in_shape {op.in_shape} does not match the prior's event_shape "
                f"{self.event_shape}"
            )
        f64, dev = torch.float64, self.device
        A = op.to_matrix(dtype=f64, device=dev)
        m_out = A.shape[0]
        y = problem.y.to(dtype=f64, device=dev).reshape(-1)
        sigma_y = torch.as_tensor(problem.noise.sigma).to(dtype=f64, device=dev)
        try:
            r = torch.broadcast_to(sigma_y**2, op.out_shape).reshape(-1)
        except RuntimeError:
            raise ValueError(
                f"noise.sigma has shape {_shape_str(sigma_y.shape)}, not broadcastable to "
                f"out_shape {op.out_shape}"
            ) from None
        means = self._means.to(f64)
        if self._kind == "scalar" and bool((r > 0).all()) and bool((r == r[0]).all()):
            return self._condition_shared(A, y, float(r[0]))
        if self._kind in ("full", "shared"):
            cov = self.covariance_matrices().to(f64)
            B = A @ cov  # A Sigma_i, (K, m, d)
        else:
            diag = self._eigh()[1].to(f64)
            cov = torch.diag_embed(diag)
            B = A * diag[:, None, :]
        S = B @ A.T + torch.diag(r)
        S = 0.5 * (S + S.transpose(-1, -2))
        L, info = torch.linalg.cholesky_ex(S)
        if bool(info.any()):
            raise ValueError("R + A Sigma_i A^T is not positive definite; check noise.sigma and the operator")
        resid = (y - means @ A.T)[..., None]  # (K, m, 1)
        alpha = torch.linalg.solve_triangular(L, resid, upper=False)  # L^{-1}(y - A m_i)
        W = torch.linalg.solve_triangular(L, B, upper=False)  # L^{-1} A Sigma_i, (K, m, d)
        log_lik = -0.5 * (alpha**2).sum((1, 2)) - torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        log_lik = log_lik - 0.5 * m_out * _LOG_2PI
        post_means = means + (W.transpose(-1, -2) @ alpha)[..., 0]
        post_cov = cov - W.transpose(-1, -2) @ W
        post_cov = 0.5 * (post_cov + post_cov.transpose(-1, -2))
        joint = self._log_weights.to(f64) + log_lik
        log_evidence = torch.logsumexp(joint, 0)
        post = self._from_parts(
            post_means.to(self.dtype),
            (joint - log_evidence).to(self.dtype),
            "full",
            post_cov.to(self.dtype),
            self.event_shape,
            self.sigma_min,
            self.sigma_max,
        )
        return post, log_evidence.to(self.dtype)

    def _condition_shared(self, A: Tensor, y: Tensor, r: float) -> tuple[GaussianMixture, Tensor]:
        """:meth:`_condition` for isotropic ``Sigma_i = c_i I`` and noise ``R = r I`` (float64 ``A``, ``y``).

        With ``A = U diag(s) V^T`` (``V`` (d, d) completed to a basis, ``s_j = 0`` beyond the rank),
        ``S_i = U diag(c_i s^2 + r) U^T`` (plus ``r`` on the complement of ``U`` when ``m > d``), the
        posterior covariance is ``V diag(c_i r / (c_i s_j^2 + r)) V^T``: one basis for all components,
        and the posterior mean ``m_i + c_i V diag(s / (c_i s^2 + r)) U^T (y - A m_i)``. One SVD of
        ``A``, no per-component factorisation.
        """
        f64 = torch.float64
        m_out, d = A.shape
        U, s, Vh = torch.linalg.svd(A, full_matrices=m_out < d)  # Vh (d, d) either way
        p = s.shape[0]
        means = self._means.to(f64)
        c = self._cov.to(f64)[:, None]  # (K, 1)
        t = y - means @ A.T  # (K, m)
        u = t @ U  # (K, p)
        ev = c * s**2 + r  # (K, p): eigenvalues of S_i along U
        quad = (u * u / ev).sum(1)
        logdet = torch.log(ev).sum(1)
        if p < m_out:  # the part of y - A m_i outside the range of A: eigenvalue r
            quad = quad + ((t - u @ U.T) ** 2).sum(1) / r
            logdet = logdet + (m_out - p) * math.log(r)
        log_lik = -0.5 * (quad + logdet + m_out * _LOG_2PI)
        post_means = means + (c * u * s / ev) @ Vh[:p]
        lam = c.expand(-1, d).clone()
        lam[:, :p] = c * r / ev
        joint = self._log_weights.to(f64) + log_lik
        log_evidence = torch.logsumexp(joint, 0)
        post = self._from_parts(
            post_means.to(self.dtype),
            (joint - log_evidence).to(self.dtype),
            "shared",
            lam.to(self.dtype),
            self.event_shape,
            self.sigma_min,
            self.sigma_max,
            basis=Vh.T.contiguous().to(self.dtype),
        )
        return post, log_evidence.to(self.dtype)

    def posterior(self, problem) -> GaussianMixture:
        """The exact posterior ``p(x | y)`` under a linear-Gaussian problem ``y = A x + n``.

        ``n ~ N(0, R)`` with ``R = diag(noise.sigma^2)`` broadcast to ``out_shape``. Per component:
        ``S_i = R + A Sigma_i A^T``, ``K_i = Sigma_i A^T S_i^{-1}`` (Cholesky solves), covariance
        ``Sigma_i - K_i A Sigma_i``, mean ``m_i + K_i (y - A m_i)``, weight ``∝ w_i N(y; A m_i, S_i)``.
        Computed in float64, returned in the prior's dtype.

        Parameters
        ----------
        problem : InverseProblem
            Linear operator with ``in_shape == event_shape``, Gaussian noise, a single ``y`` of shape
            ``out_shape``.

        Returns
        -------
        GaussianMixture
            Full covariances, the same event_shape, sigma_min and sigma_max. For an isotropic prior
            and one noise level (``R = r I``) they are stored by one shared eigenbasis (the right
            singular vectors of ``A``, :attr:`shared_basis`) and per-component eigenvalues
            ``c_i r / (c_i s_j^2 + r)``: built from one SVD of ``A`` and evaluated in O(n d^2 + n K d)
            (O(n d m + n K d) for ``m <= d / 2`` measurements).
        """
        return self._condition(problem)[0]

    def log_evidence(self, problem) -> Tensor:
        """``log p(y) = log sum_i w_i N(y; A m_i, R + A Sigma_i A^T)``, a 0-d tensor; see :meth:`posterior`.

        Parameters
        ----------
        problem : InverseProblem
            As for :meth:`posterior`.

        Returns
        -------
        Tensor, shape ()
        """
        return self._condition(problem)[1]

    def noised_posterior(self, problem, sigma: float | Tensor) -> GaussianMixture:
        """The exact diffused posterior ``p_sigma(x | y)``: ``self.posterior(problem).noised(sigma)``.

        Its ``score`` is the exact guided score ``grad log p_sigma(x) + grad log p_sigma(y | x)``.
        """
        return self.posterior(problem).noised(sigma)

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> GaussianMixture:
        """A copy with parameters in ``dtype`` (float32/float64) and on ``device``."""
        dtype = dtype or self.dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        device = torch.device(device) if device is not None else self.device

        def cast(t):
            return None if t is None else t.to(dtype=dtype, device=device).clone()

        eig = None if self._eig is None or self._kind != "full" else (cast(self._eig[0]), cast(self._eig[1]))
        return self._from_parts(
            cast(self._means),
            cast(self._log_weights),
            self._kind,
            cast(self._cov),
            self.event_shape,
            self.sigma_min,
            self.sigma_max,
            eig,
            cast(self._basis),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_components={self.num_components}, event_shape={self.event_shape}, "
            f"covariance_type={self.covariance_type!r}, dtype={self.dtype}, device={self.device})"
        )

    # -- benchmark mixtures -----------------------------------------------------------------------
    @staticmethod
    def _benchmark_shape(dim: int, event_shape: Sequence[int] | None) -> tuple[int, ...]:
        dim = as_int(dim, "dim", minimum=1)
        shape = (dim,) if event_shape is None else as_shape(event_shape, "event_shape")
        if math.prod(shape) != dim:
            raise ValueError(f"event_shape {shape} has {math.prod(shape)} elements, expected dim = {dim}")
        return shape

    @classmethod
    def grid(
        cls,
        dim: int,
        num_components: int = 25,
        spacing: float = 8.0,
        std: float = 1.0,
        seed: int = 0,
        *,
        event_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> GaussianMixture:
        """Well-separated modes on a grid: the 25-component benchmark of MCGdiff (Cardoso et al. 2023).

        Recipe: with ``g = sqrt(num_components)`` (a perfect square; 5 by default) and offsets
        ``c_a = a - (g - 1) / 2`` for ``a = 0..g-1`` (``-2..2``), component ``(a, b)`` has mean
        ``spacing * (c_a, c_b, c_a, c_b, ...)`` (the pair tiled over ``dim`` coordinates, truncated
        when ``dim`` is odd), covariance ``std^2 I``, and weight ``u_ab / sum u`` with
        ``u ~ Uniform(0, 1)`` drawn in float64 from ``torch.Generator().manual_seed(seed)`` (CPU).

        Parameters
        ----------
        dim : int, >= 2
        event_shape : tuple of int, optional
            Shape of one sample (e.g. ``(1, 8, 8)``), ``prod(event_shape) == dim``; default ``(dim,)``.
        """
        dim = as_int(dim, "dim", minimum=2)
        shape = cls._benchmark_shape(dim, event_shape)
        num_components = as_int(num_components, "num_components", minimum=1)
        g = math.isqrt(num_components)
        if g * g != num_components:
            raise ValueError(f"num_components must be a perfect square (a g x g grid), got {num_components}")
        spacing, std, seed = as_float(spacing, "spacing"), as_float(std, "std", gt=0), as_seed(seed)
        offsets = torch.arange(g, dtype=torch.float64) - (g - 1) / 2
        ca, cb = torch.meshgrid(offsets, offsets, indexing="ij")
        pairs = torch.stack([ca.reshape(-1), cb.reshape(-1)], 1)  # (K, 2)
        means = spacing * pairs.repeat(1, (dim + 1) // 2)[:, :dim]
        gen = torch.Generator().manual_seed(seed)
        weights = torch.rand(num_components, generator=gen, dtype=torch.float64).clamp_min(1e-6)
        covs = torch.full((num_components,), float(std) ** 2, dtype=torch.float64)
        return cls(
            means.reshape(num_components, *shape).to(dtype=dtype, device=device),
            weights.to(dtype=dtype, device=device),
            covs.to(dtype=dtype, device=device),
        )

    @classmethod
    def random(
        cls,
        dim: int,
        num_components: int = 10,
        separation: float = 2.0,
        std: float = 1.0,
        seed: int = 0,
        *,
        covariance: str = "scalar",
        event_shape: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> GaussianMixture:
        """Overlapping modes at random positions.

        Recipe, all drawn in float64 from ``torch.Generator().manual_seed(seed)`` (CPU), in this order:
        means ``m_i = separation * z_i / sqrt(dim)`` with ``z_i ~ N(0, I_dim)`` (so ``E|m_i - m_j|^2 =
        2 separation^2`` whatever ``dim``: ``separation`` is in units of ``std``-sized modes and small
        values overlap); weights ``u_i / sum u`` with ``u_i ~ Uniform(0.5, 1.5)``; covariances by
        ``covariance``: ``"scalar"`` ``std^2 I``; ``"diagonal"`` ``std^2 diag(v)`` with
        ``v ~ Uniform(0.5, 1.5)^dim``; ``"full"`` ``std^2 Q diag(v) Q^T`` with ``v`` as before and
        ``Q`` the orthogonal factor of the QR decomposition of a standard normal matrix.

        Parameters
        ----------
        dim : int
        event_shape : tuple of int, optional
            Shape of one sample, ``prod(event_shape) == dim``; default ``(dim,)``.
        """
        shape = cls._benchmark_shape(dim, event_shape)
        dim, k = as_int(dim, "dim"), as_int(num_components, "num_components", minimum=1)
        separation, std = as_float(separation, "separation"), as_float(std, "std", gt=0)
        seed = as_seed(seed)
        if covariance not in ("scalar", "diagonal", "full"):
            raise ValueError(f"covariance must be 'scalar', 'diagonal' or 'full', got {covariance!r}")
        f64 = torch.float64
        gen = torch.Generator().manual_seed(seed)
        means = separation * torch.randn(k, dim, generator=gen, dtype=f64) / math.sqrt(dim)
        weights = 0.5 + torch.rand(k, generator=gen, dtype=f64)
        var = float(std) ** 2
        if covariance == "scalar":
            covs = torch.full((k,), var, dtype=f64)
        else:
            v = var * (0.5 + torch.rand(k, dim, generator=gen, dtype=f64))
            if covariance == "diagonal":
                covs = v
            else:
                q, _ = torch.linalg.qr(torch.randn(k, dim, dim, generator=gen, dtype=f64))
                covs = (q * v[:, None, :]) @ q.transpose(-1, -2)
                covs = 0.5 * (covs + covs.transpose(-1, -2))
        return cls(
            means.reshape(k, *shape).to(dtype=dtype, device=device),
            weights.to(dtype=dtype, device=device),
            covs.to(dtype=dtype, device=device),
        )


class Gaussian(GaussianMixture):
    """A Gaussian prior ``N(mean, cov)``: a one-component :class:`GaussianMixture`.

    Parameters
    ----------
    mean : Tensor, shape event_shape
    cov : float or Tensor
        A float or 0-d tensor (isotropic variance), shape ``(d,)`` or ``event_shape`` (diagonal), or
        ``(d, d)`` (full, symmetric positive definite).
    sigma_min, sigma_max : float, optional
        As for :class:`GaussianMixture`.
    """

    def __init__(
        self,
        mean: Tensor,
        cov: float | Tensor,
        *,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
    ):
        if not isinstance(mean, Tensor):
            raise TypeError(f"mean must be a torch.Tensor of shape event_shape, got {type(mean).__name__}")
        if mean.dim() < 1:
            raise ValueError(
                f"mean must be a tensor of shape event_shape, got shape {_shape_str(mean.shape)}"
            )
        if isinstance(cov, Tensor) and cov.dim() > 0:
            cov = cov[None]
        super().__init__(
            mean[None],
            torch.ones(1, dtype=mean.dtype, device=mean.device),
            cov,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
        )
