"""Posterior samples with their cost, weights and trace; ArviZ conversion and safe save/load."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from posterior.utils import atomic_write


@dataclass
class PosteriorSamples:
    """Draws from (an approximation of) the posterior ``p(x | y)``.

    Attributes
    ----------
    samples : Tensor, shape (chains, draws, *event_shape)
    log_weights : Tensor, shape (chains, draws), optional
        Unnormalised log importance weights (SMC); normalised within each chain when used.
        ``None`` means equally weighted draws.
    nfe : int
        Number of network (denoiser) evaluations per sample.
    grad_evals : int
        Number of backpropagations through the network (vector-Jacobian products) per sample.
    wall_time : float
        Seconds spent sampling.
    trace : dict of str to Tensor
        Per-step diagnostics (e.g. ``sigma``, ``ess``), each of shape ``(steps, ...)``.
    sample_stats : dict of str to Tensor
        Per-draw statistics of shape ``(chains, draws)``, e.g. ``log_likelihood`` = ``log p(y | x)``.
    sampler : str
        Name of the sampler, with ``config`` its hyperparameters.
    kind : str
        What the draws are: ``"samples"`` (exact in the limit), ``"mcmc"`` (correlated draws),
        ``"variational"`` or ``"variational-modes"``.
    """

    samples: Tensor
    log_weights: Tensor | None = None
    nfe: int = 0
    grad_evals: int = 0
    wall_time: float = 0.0
    trace: dict[str, Tensor] = field(default_factory=dict)
    sample_stats: dict[str, Tensor] = field(default_factory=dict)
    sampler: str = ""
    config: dict = field(default_factory=dict)
    kind: str = "samples"

    def __post_init__(self):
        if not isinstance(self.samples, Tensor) or self.samples.dim() < 3:
            raise ValueError(
                f"samples must be a tensor of shape (chains, draws, *event_shape), got "
                f"{tuple(getattr(self.samples, 'shape', ()))}"
            )
        per_draw = {"log_weights": self.log_weights} if self.log_weights is not None else {}
        per_draw.update({f"sample_stats[{k!r}]": v for k, v in self.sample_stats.items()})
        for name, value in per_draw.items():
            if tuple(value.shape) != tuple(self.samples.shape[:2]):
                raise ValueError(
                    f"{name} has shape {tuple(value.shape)}, expected {tuple(self.samples.shape[:2])}"
                )

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def chains(self) -> int:
        return self.samples.shape[0]

    @property
    def draws(self) -> int:
        return self.samples.shape[1]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[2:])

    def flat(self) -> Tensor:
        """All draws, chains pooled: shape ``(chains * draws, *event_shape)``."""
        return self.samples.reshape(-1, *self.event_shape)

    def weights(self) -> Tensor:
        """Normalised weights of the pooled draws, shape ``(chains * draws,)``; chains count equally."""
        if self.log_weights is None:
            n = self.chains * self.draws
            return torch.full((n,), 1.0 / n, dtype=self.samples.dtype, device=self.samples.device)
        w = torch.softmax(self.log_weights.to(torch.float64), dim=1) / self.chains
        return w.reshape(-1).to(self.samples.dtype)

    # -- summaries ------------------------------------------------------------------------------
    def mean(self) -> Tensor:
        """Posterior mean (weighted when ``log_weights`` is set), shape ``event_shape``."""
        w = self.weights()
        return torch.tensordot(w, self.flat(), dims=1)

    def std(self) -> Tensor:
        """Posterior standard deviation per coordinate, shape ``event_shape``."""
        w = self.weights()
        centred = self.flat() - self.mean()
        return torch.tensordot(w, centred**2, dims=1).sqrt()

    def quantile(self, q: float | Tensor) -> Tensor:
        """Weighted per-coordinate quantiles (inverse of the weighted empirical CDF).

        Parameters
        ----------
        q : float or Tensor of shape (k,), values in [0, 1]

        Returns
        -------
        Tensor, shape event_shape for a float ``q``, else (k, *event_shape)
        """
        q_t = torch.as_tensor(q, dtype=torch.float64, device=self.samples.device)
        if not bool(((q_t >= 0) & (q_t <= 1)).all()):  # also rejects NaN
            raise ValueError(f"q must lie in [0, 1], got {q}")
        x = self.flat().reshape(self.chains * self.draws, -1)
        order = torch.argsort(x, dim=0)
        xs = torch.gather(x, 0, order)
        cdf = torch.cumsum(self.weights().to(torch.float64)[order], dim=0)
        cdf = cdf / cdf[-1:]
        # smallest sample whose CDF reaches q; the slack absorbs cumsum rounding at exact CDF steps
        levels = (q_t.reshape(1, -1) - 1e-12).expand(cdf.shape[1], -1).contiguous()
        idx = torch.searchsorted(cdf.T.contiguous(), levels)
        idx = idx.clamp(max=x.shape[0] - 1)
        out = torch.gather(xs.T, 1, idx).T  # (k, d)
        out = out.reshape(-1, *self.event_shape)
        return out[0] if q_t.dim() == 0 else out

    # -- ArviZ ----------------------------------------------------------------------------------
    def to_arviz(self, dims: list[str] | None = None):
        """ArviZ's container: an ``xarray.DataTree`` with groups ``posterior`` (variable ``x``) and
        ``sample_stats`` (the per-draw statistics, and ``log_weight`` when weighted), cost figures
        in the attributes.

        Parameters
        ----------
        dims : list of str, optional
            Names of the event dimensions; default ``["dim"]`` for vectors, ``["channel", "row",
            "col"]`` for images and ``["x_dim_i", ...]`` otherwise.
        """
        import arviz_base as azb

        if dims is None:
            dims = {1: ["dim"], 2: ["row", "col"], 3: ["channel", "row", "col"]}.get(
                len(self.event_shape), [f"x_dim_{i}" for i in range(len(self.event_shape))]
            )
        if len(dims) != len(self.event_shape):
            raise ValueError(
                f"dims has {len(dims)} names, expected {len(self.event_shape)} for {self.event_shape}"
            )
        groups = {"posterior": {"x": self.samples.detach().cpu().numpy()}}
        stats = {k: v.detach().cpu().numpy() for k, v in self.sample_stats.items()}
        if self.log_weights is not None:
            stats["log_weight"] = self.log_weights.detach().cpu().numpy()
        if stats:
            groups["sample_stats"] = stats
        tree = azb.from_dict(groups, dims={"x": list(dims)})
        tree.attrs.update(
            sampler=self.sampler,
            kind=self.kind,
            nfe=self.nfe,
            grad_evals=self.grad_evals,
            wall_time=self.wall_time,
        )
        return tree

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to a safetensors file, atomically (a temporary file in the same folder, then rename).

        Tensors go in the safetensors payload; the scalars and the config as JSON metadata. Loading
        never executes code from the file.
        """
        from safetensors.torch import save_file

        tensors = {"samples": self.samples}
        if self.log_weights is not None:
            tensors["log_weights"] = self.log_weights
        tensors.update({f"trace.{k}": torch.as_tensor(v) for k, v in self.trace.items()})
        tensors.update({f"stats.{k}": v for k, v in self.sample_stats.items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": "posterior.PosteriorSamples/1",
            "info": json.dumps(
                {
                    "nfe": self.nfe,
                    "grad_evals": self.grad_evals,
                    "wall_time": self.wall_time,
                    "sampler": self.sampler,
                    "config": self.config,
                    "kind": self.kind,
                },
                default=str,
            ),
        }
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> PosteriorSamples:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != "posterior.PosteriorSamples/1":
                raise ValueError(f"{path} is not a file written by PosteriorSamples.save")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        info = json.loads(meta["info"])
        trace = {k.removeprefix("trace."): v for k, v in tensors.items() if k.startswith("trace.")}
        stats = {k.removeprefix("stats."): v for k, v in tensors.items() if k.startswith("stats.")}
        return cls(
            samples=tensors["samples"],
            log_weights=tensors.get("log_weights"),
            trace=trace,
            sample_stats=stats,
            **info,
        )

    def __repr__(self) -> str:
        return (
            f"PosteriorSamples({self.sampler or 'unknown'}: {self.chains} chains x {self.draws} draws of "
            f"{self.event_shape}, kind={self.kind}, nfe={self.nfe}, wall_time={self.wall_time:.2f}s)"
        )
