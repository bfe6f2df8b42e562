"""Posterior samples with their cost, weights and trace; ArviZ conversion and safe save/load."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from posterior.utils import atomic_write, refuse_to_replace, wrong_field

if typing.TYPE_CHECKING:
    from posterior.evidence import Evidence

FORMAT = "posterior.PosteriorSamples/3"  # 2 added shared_measurement, 3 params and measurement
# /1 files load as shared_measurement=True; /1 and /2 files have no params and no measurement digest
READABLE = ("posterior.PosteriorSamples/1", "posterior.PosteriorSamples/2", FORMAT)
KINDS = ("samples", "mcmc", "approximate", "variational", "variational-modes")  # what samplers return
# The JSON fields of a saved result and their types (``verdict`` is None or a Verdict's fields)
INFO = {
    "nfe": int,
    "grad_evals": int,
    "wall_time": (int, float),
    "sampler": str,
    "config": dict,
    "kind": str,
    "verdict": (dict, type(None)),
    "shared_measurement": bool,
    "measurement": str,
}
VERDICT = {"ok": bool, "line": str, "problems": list, "checks": dict}


@dataclass
class Verdict:
    """The outcome of a run's checks (:func:`posterior.diagnostics.check`).

    Attributes
    ----------
    ok : bool
        No check failed.
    line : str
        One line for people: the sampler, what was checked and what failed.
    problems : list of str
        Each failed check, with what to change.
    checks : dict
        The measured quantities behind the checks (numbers and short lists).
    """

    ok: bool
    line: str
    problems: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return "\n".join([self.line] + [f"  - {p}" for p in self.problems])


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
        What the draws are: ``"samples"`` (exact in the limit: SMC particles, exact draws),
        ``"mcmc"`` (correlated draws of Markov chains), ``"approximate"`` (guided samplers such as DPS,
        biased at any budget), ``"variational"`` or ``"variational-modes"``.
    verdict : Verdict, optional
        What the checks of :func:`posterior.diagnostics.check` found when the run ended.
    shared_measurement : bool
        Whether every chain answered the same ``y`` (False when ``y`` was batched with one measurement
        per chain or per draw): only then do the chains' evidence estimates pool into one. Files saved
        by earlier versions (format 1) did not record it and load as True.
    measurement : str
        A digest of the ``y`` that every chain answered (:func:`measurement_digest`), so that results
        of different measurements are not compared by their evidence; ``""`` when unknown or batched.
    params : dict of str to Tensor
        Draws of the forward model's unknown parameters that go with ``samples`` (same weights), each
        of shape ``(chains, draws, *parameter_shape)`` (:func:`posterior.sample_with_parameters`);
        empty when the forward model was fully known.
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
    verdict: Verdict | None = None
    shared_measurement: bool = True
    measurement: str = ""
    params: dict[str, Tensor] = field(default_factory=dict)

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
        for name, value in self.params.items():
            if not isinstance(value, Tensor) or tuple(value.shape[:2]) != tuple(self.samples.shape[:2]):
                raise ValueError(
                    f"params[{name!r}] has shape {tuple(getattr(value, 'shape', ()))}, expected "
                    f"({self.samples.shape[0]}, {self.samples.shape[1]}, *parameter_shape)"
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

    def evidence(self) -> Evidence:
        """``log p(y)`` from the chains' (independent SMC runs') estimates, with its Monte-Carlo
        standard error: :func:`posterior.evidence.log_evidence`. ``ValueError`` for samplers that do
        not estimate the evidence and for chains that answered different measurements."""
        from posterior.evidence import log_evidence

        return log_evidence(self)

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

    def interval(self, level: float = 0.9) -> tuple[Tensor, Tensor]:
        """Central credible interval per coordinate: the weighted quantiles at ``(1 -+ level) / 2``.

        Returns
        -------
        lower, upper : Tensor, shape event_shape
        """
        if not 0 < level < 1:
            raise ValueError(f"level must lie in (0, 1), got {level}")
        bounds = self.quantile(torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
        return bounds[0], bounds[1]

    def run_means(self) -> Tensor:
        """Each chain's (run's) mean, weighted within the run, in float64: shape ``(chains, *event_shape)``."""
        return torch.einsum("cn,cn...->c...", self._run_weights(), self.samples.double())

    def run_standard_errors(self) -> Tensor:
        """Each run's own Monte-Carlo standard error of its mean, in float64, shape ``(chains,
        *event_shape)``: ``sqrt(sum_i W_i^2 (x_i - m)^2)`` for weighted particles (the self-normalised
        importance sampling estimate, blind to the particles' shared ancestry) and ``sd / sqrt(draws)``
        for equally weighted independent draws (blind to autocorrelation: not for Markov chains).
        Draws that share a quadrature node of unknown parameters (``sample_stats["node"]``, from
        :func:`posterior.sample_with_parameters`) move together, so they count as one cluster:
        ``sqrt(sum_k (sum_{i in k} W_i (x_i - m))^2)``."""
        W = self._run_weights()
        terms = W[:, :, None] * (self.samples.double() - self.run_means()[:, None]).flatten(2)  # (c, n, d)
        if "node" in self.sample_stats:
            node = self.sample_stats["node"].long().to(terms.device)
            terms = torch.zeros(
                terms.shape[0], int(node.max()) + 1, terms.shape[2], dtype=terms.dtype, device=terms.device
            ).scatter_add_(1, node[:, :, None].expand_as(terms), terms)
        return (terms**2).sum(1).sqrt().reshape(self.chains, *self.event_shape)

    def _run_weights(self) -> Tensor:
        """Normalised weights within each run, float64, shape ``(chains, draws)``."""
        if self.log_weights is None:
            return torch.full(
                self.samples.shape[:2], 1.0 / self.draws, dtype=torch.float64, device=self.samples.device
            )
        return torch.softmax(self.log_weights.to(torch.float64), dim=1)

    def summary(self, level: float = 0.9):
        """A per-coordinate table (a ``pandas.DataFrame``, one row per coordinate of ``x``, then of each
        unknown parameter in :attr:`params`).

        Weighted (SMC) results: ``mean``, ``sd``, the central ``level`` interval (``lower``, ``upper``),
        ``mcse_mean`` (``sqrt(v / chains)``, ``v`` the larger of the variance of the runs' means
        and the mean of their squared own standard errors: neither a few runs' spread nor the
        importance-sampling formula alone is trusted), ``ess_mean = sd^2 / mcse_mean^2`` and, for two
        runs or more, :func:`agreement`, about 1 when the runs agree within their own standard errors
        and larger when they do not (no Markov-chain R-hat: the runs are
        independent weighted ensembles). Equally weighted draws: ArviZ's summary of :meth:`to_arviz`
        with the same interval (rank-normalised R-hat and ESS, meaningful for Markov chains).
        """
        import pandas as pd

        if self.log_weights is None:
            import arviz_stats as azs

            return azs.summary(self.to_arviz(), var_names=["x", *self.params], ci_prob=level)
        tables = [self._weighted_summary(level, "x")]
        for name, value in self.params.items():
            flat = value.reshape(*value.shape[:2], -1).double()
            part = dataclasses.replace(self, samples=flat, params={})
            tables.append(part._weighted_summary(level, name, tuple(value.shape[2:])))
        return pd.concat(tables)

    def _weighted_summary(self, level: float, name: str, shape: tuple[int, ...] | None = None):
        """:meth:`summary`'s rows for the coordinates of ``samples``, named ``name[i, ...]`` after
        ``shape`` (default ``event_shape``; a scalar's row is ``name``)."""
        import pandas as pd

        lower, upper = self.interval(level)
        sd = self.std().double()
        means, se = self.run_means().double(), self.run_standard_errors().double()
        columns = {"mean": self.mean(), "sd": sd, "lower": lower, "upper": upper}
        variance = (se**2).mean(0)
        if self.chains >= 2:
            variance = torch.maximum(variance, means.var(0))
            columns["agreement"] = agreement(means, se)
        mcse = (variance / self.chains).sqrt()
        columns["mcse_mean"] = mcse
        columns["ess_mean"] = sd**2 / mcse.clamp_min(torch.finfo(torch.float64).tiny) ** 2
        shape = self.event_shape if shape is None else shape
        names = (
            [f"{name}[{', '.join(str(int(i)) for i in idx)}]" for idx in _indices(shape)] if shape else [name]
        )
        return pd.DataFrame(
            {k: v.detach().double().cpu().reshape(-1).numpy() for k, v in columns.items()}, index=names
        )

    # -- ArviZ ----------------------------------------------------------------------------------
    def resampled(self, seed: int = 0) -> PosteriorSamples:
        """Equally weighted draws: each weighted run resampled to ``draws`` particles by systematic
        resampling (one uniform per run from ``seed``; each particle kept ``N W_i`` times, rounded up
        or down), per-draw statistics carried along. Unweighted results are returned as they are."""
        if self.log_weights is None:
            return self
        from posterior.samplers.resampling import resample_indices

        generator = torch.Generator(self.log_weights.device).manual_seed(seed)
        index = resample_indices(self.log_weights, "systematic", generator)

        def pick(t: Tensor) -> Tensor:
            return torch.gather(t, 1, index.reshape(*index.shape, *[1] * (t.dim() - 2)).expand_as(t))

        return PosteriorSamples(
            samples=pick(self.samples),
            nfe=self.nfe,
            grad_evals=self.grad_evals,
            wall_time=self.wall_time,
            trace=self.trace,
            sample_stats={k: pick(v) for k, v in self.sample_stats.items()},
            sampler=self.sampler,
            config=self.config,
            kind=self.kind,
            verdict=self.verdict,
            shared_measurement=self.shared_measurement,
            measurement=self.measurement,
            params={k: pick(v) for k, v in self.params.items()},
        )

    def to_arviz(self, dims: list[str] | None = None):
        """ArviZ's container: an ``xarray.DataTree`` with groups ``posterior`` (variable ``x``, and one
        variable per unknown parameter of :attr:`params`) and ``sample_stats`` (the per-draw
        statistics), cost figures in the attributes.

        Every ArviZ function treats draws as equally weighted, so for a weighted (SMC) result
        ``posterior`` holds :meth:`resampled` draws (each run resampled systematically by its
        weights): summaries, plots and CSVs of it are right without knowing about weights. The
        weighted particles themselves are in the group ``particles`` (``x``, the parameters and
        ``log_weight``).
        The chains of an SMC result are independent runs, not Markov chains: judge them with
        :func:`posterior.diagnostics.check`, not with R-hat.

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

        def numpy(t: Tensor):
            return t.detach().cpu().numpy()

        draws = self.resampled()
        groups = {"posterior": {"x": numpy(draws.samples), **{k: numpy(v) for k, v in draws.params.items()}}}
        if draws.sample_stats:
            groups["sample_stats"] = {k: numpy(v) for k, v in draws.sample_stats.items()}
        if self.log_weights is not None:
            groups["particles"] = {
                "x": numpy(self.samples),
                **{k: numpy(v) for k, v in self.params.items()},
                "log_weight": numpy(self.log_weights),
            }
        param_dims = {k: [f"{k}_dim_{i}" for i in range(v.dim() - 2)] for k, v in self.params.items()}
        tree = azb.from_dict(groups, dims={"x": list(dims), **param_dims})
        tree.attrs.update(
            sampler=self.sampler,
            kind=self.kind,
            nfe=self.nfe,
            grad_evals=self.grad_evals,
            wall_time=self.wall_time,
            draws="resampled from weighted particles (systematic, seed 0)"
            if self.log_weights is not None
            else "as sampled",
        )
        if self.verdict is not None:
            tree.attrs["verdict"] = self.verdict.line
        return tree

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write to a safetensors file, atomically (a temporary file in the same folder, then rename).

        Tensors go in the safetensors payload; the scalars and the config as JSON metadata. Loading
        never executes code from the file. An existing file at ``path`` is replaced if it is a result
        saved by this method; any other file is refused (``FileExistsError``) unless ``overwrite``.
        """
        from safetensors.torch import save_file

        if not overwrite:
            refuse_to_replace(
                path, _is_result, "a saved PosteriorSamples", "pass overwrite=True to replace it"
            )

        tensors = {"samples": self.samples}
        if self.log_weights is not None:
            tensors["log_weights"] = self.log_weights
        tensors.update({f"trace.{k}": torch.as_tensor(v) for k, v in self.trace.items()})
        tensors.update({f"stats.{k}": v for k, v in self.sample_stats.items()})
        tensors.update({f"params.{k}": v for k, v in self.params.items()})
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {
            "format": FORMAT,
            "info": json.dumps(
                {
                    "nfe": self.nfe,
                    "grad_evals": self.grad_evals,
                    "wall_time": self.wall_time,
                    "sampler": self.sampler,
                    "config": self.config,
                    "kind": self.kind,
                    "verdict": dataclasses.asdict(self.verdict) if self.verdict is not None else None,
                    "shared_measurement": self.shared_measurement,
                    "measurement": self.measurement,
                },
                default=str,
            ),
        }
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> PosteriorSamples:
        """Read a file written by :meth:`save`.

        A file that is not one (truncated, foreign) or whose contents are not a result (a field of
        :data:`INFO` missing or of another type, ``kind`` not in :data:`KINDS`, negative counts,
        non-finite samples, NaN or +inf log-weights, per-draw shapes that disagree with the samples,
        unknown tensors) raises one ``ValueError`` naming the file and what is wrong.
        """
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                meta = f.metadata() or {}
                if meta.get("format") not in READABLE:
                    raise ValueError(f"{path} is not a file written by PosteriorSamples.save")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError) as err:  # OSError: a folder, an unreadable file
            raise ValueError(f"{path} is not a file written by PosteriorSamples.save: {err}") from err
        trace = {k.removeprefix("trace."): v for k, v in tensors.items() if k.startswith("trace.")}
        stats = {k.removeprefix("stats."): v for k, v in tensors.items() if k.startswith("stats.")}
        params = {k.removeprefix("params."): v for k, v in tensors.items() if k.startswith("params.")}
        try:
            info = json.loads(meta.get("info", "null"))
            if isinstance(info, dict) and meta["format"] != FORMAT:
                info.setdefault("shared_measurement", True)  # format 1 did not record it
                info.setdefault("measurement", "")  # nor did format 2
            wrong = _wrong_content(info, tensors)
            if wrong is not None:
                raise ValueError(wrong)
            if info["verdict"] is not None:
                info["verdict"] = Verdict(**info["verdict"])
            samples, log_weights = tensors["samples"], tensors.get("log_weights")
            # the constructor checks the shapes
            return cls(samples, log_weights, trace=trace, sample_stats=stats, params=params, **info)
        except ValueError as err:
            raise ValueError(f"{path} is not a valid saved PosteriorSamples: {err}") from err

    def __repr__(self) -> str:
        return (
            f"PosteriorSamples({self.sampler or 'unknown'}: {self.chains} chains x {self.draws} draws of "
            f"{self.event_shape}, kind={self.kind}, nfe={self.nfe}, wall_time={self.wall_time:.2f}s)"
        )


def _wrong_content(info, tensors: dict[str, Tensor]) -> str | None:
    """What is wrong with a saved result's JSON fields and tensors, as a phrase, or None."""
    if not isinstance(info, dict):
        return "its 'info' metadata is not a JSON object"
    wrong = wrong_field(info, INFO) or (info["verdict"] and wrong_field(info["verdict"], VERDICT))
    if wrong:
        return wrong
    unknown = sorted(set(info) - set(INFO)) + sorted(set(info["verdict"] or {}) - set(VERDICT))
    unknown += [
        k
        for k in tensors
        if k not in ("samples", "log_weights") and not k.startswith(("trace.", "stats.", "params."))
    ]
    if unknown:
        return f"unknown fields {unknown}"
    if info["kind"] not in KINDS:
        return f"kind is {info['kind']!r}, expected one of {KINDS}"
    if not min(info["nfe"], info["grad_evals"], info["wall_time"]) >= 0 or not math.isfinite(info["wall_time"]):
        return "nfe, grad_evals and wall_time must be finite and >= 0"
    samples, log_weights = tensors.get("samples"), tensors.get("log_weights")
    if samples is None or not samples.is_floating_point() or not samples.isfinite().all():
        return "'samples' is missing or not all finite floating-point numbers"
    if log_weights is not None and (log_weights.isnan() | (log_weights == torch.inf)).any():
        return "'log_weights' hold NaN or +inf"
    return None


def _is_result(path: Path) -> bool:
    """Whether ``path`` is a file written by :meth:`PosteriorSamples.save` (its header says so)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") in READABLE
    except Exception:  # not a safetensors file, a folder, unreadable
        return False


def agreement(means: Tensor, standard_errors: Tensor) -> Tensor:
    """Between-run agreement per coordinate, from the runs' means ``m_r`` and standard errors ``se_r``
    (shape ``(R, ...)``): ``sqrt(Q / (R - 1))`` with Cochran's ``Q = sum_r (m_r - m_w)^2 / se_r^2``, ``m_w``
    the inverse-variance weighted mean.

    For runs whose standard errors are right, ``Q`` is about chi-square with ``R - 1`` degrees of
    freedom whatever their sizes, so ``agreement`` is near 1; runs that disagree beyond what their own
    standard errors allow give larger values. Standard errors are floored at 64 rounding errors of the
    means (float64), so that a coordinate that is constant up to rounding agrees.
    """
    means, standard_errors = means.double(), standard_errors.double()
    floor = 64 * torch.finfo(torch.float64).eps * means.abs()
    se = torch.maximum(standard_errors, floor).clamp_min(1e-150)
    precision = se**-2
    pooled = (precision * means).sum(0) / precision.sum(0)
    q = ((means - pooled) ** 2 * precision).sum(0)
    return (q / (means.shape[0] - 1)).sqrt()


def measurement_digest(y: Tensor) -> str:
    """A short digest of a measurement ``y`` (its shape and values, in float64 on the CPU, so that one
    ``y`` in another dtype or on another device has the same digest): equal for equal ``y``, and
    different, in all likelihood, for different ones."""
    import hashlib

    t = y.detach().to("cpu", torch.float64).contiguous() + 0.0  # + 0.0: -0.0 and 0.0 alike
    digest = hashlib.sha256(str(tuple(t.shape)).encode())
    digest.update(t.reshape(-1).numpy().tobytes())
    return digest.hexdigest()[:16]


def _indices(shape: tuple[int, ...]):
    return itertools.product(*(range(n) for n in shape))
