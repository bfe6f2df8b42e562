"""Forward models with unknown parameters: draws of ``p(x, theta | y)`` weighted by the evidence.

A forward model often carries parameters ``theta`` of its own (a noise level, a blur width, a gain)
with a prior ``p(theta)``. With ``Z(theta) = p(y | theta)`` the evidence of the model at ``theta``,

    p(x, theta | y) = p(theta) Z(theta) p(x | y, theta) / p(y),    p(y) = E_{p(theta)}[Z(theta)].

For a low-dimensional ``theta`` this is a quadrature. Each chain places nodes ``theta_k`` with masses
``m_k`` (a scrambled Sobol set drawn from a proposal in the probit space of the components with an
inverse CDF, mass = prior over proposal density; prior draws for components without one; every value
of a discrete component, with its probability), runs an evidence-estimating sampler at each node and
weights the node's particles by ``m_k * Z_hat_k``. Pilot rounds find the posterior (the first with
the prior as proposal, later ones with proposals fitted to the weighted points found so far, until
half a round's points carry weight); a final round placed by them is each chain's result, a weighted
sample of the joint posterior, and ``sum_k m_k Z_hat_k`` estimates
``p(y)`` without bias when the ``Z_hat_k`` are unbiased, so the chains' evidences pool and compare like
any particle sampler's (:func:`posterior.compare`). The derivation and the exact tests are in
``docs/parameters.md``.

Cost: ``chains * nodes`` runs of the sampler per round, pilots and final (times the size of each
discrete component's support).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent
from tqdm import tqdm

from operators import PyroLikelihood
from operators.checks import as_int
from operators.noise import seeded_global_rng
from posterior import diagnostics
from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples, measurement_digest
from posterior.samplers.base import Sampler
from posterior.samplers.exact import ExactPosterior
from posterior.samplers.smc import ParticleSampler
from posterior.utils import make_generator

Prior = Distribution | Tensor  # a distribution, or a 1-D tensor of equally likely candidate values
HEAVY_NODE = 0.01  # a node with more posterior weight than this must pass its own run's checks
RESERVED = ("x", "log_weight")  # names of the result's own variables (ArviZ groups)


@dataclasses.dataclass(frozen=True)
class Component:
    """One unknown parameter's prior, as the quadrature uses it.

    ``values``/``log_mass``: every value of a discrete parameter (shape ``(K, *shape)``) and its log
    probability; ``None`` for a continuous one, drawn through ``distribution.icdf`` when ``icdf``, else
    by ``distribution.sample``.
    """

    name: str
    shape: tuple[int, ...]
    distribution: Distribution | None = None
    icdf: bool = False
    values: Tensor | None = None
    log_mass: Tensor | None = None
    probe: Tensor | None = None  # a prior draw: the dtype and device of the values


def component(name: str, spec: Prior) -> Component:
    """Check one parameter's prior and say how the quadrature reads it."""
    if isinstance(spec, Tensor):
        if spec.dim() != 1 or spec.numel() == 0 or not bool(torch.isfinite(spec).all()):
            raise ValueError(f"the candidates of {name!r} must be a non-empty 1-D tensor of finite values")
        log_mass = torch.full((spec.numel(),), -math.log(spec.numel()), dtype=torch.float64)
        return Component(name, (), values=spec, log_mass=log_mass)
    if not isinstance(spec, Distribution):
        raise TypeError(
            f"the prior of {name!r} must be a torch (or Pyro) distribution or a 1-D tensor of candidate "
            f"values, got {type(spec).__name__}"
        )
    base = spec
    while isinstance(base, Independent):  # Pyro's .to_event(): the same independent components
        base = base.base_dist
    if base.event_shape != ():
        raise ValueError(
            f"the prior of {name!r} ({type(base).__name__}) has event shape {tuple(base.event_shape)}: "
            "give independent components (a distribution with a batch shape, e.g. Normal(loc, scale) "
            "with vector loc), whose nodes the quadrature places one coordinate at a time"
        )
    shape = tuple(base.batch_shape)
    if base.has_enumerate_support:
        if shape:
            raise ValueError(f"the discrete prior of {name!r} must be a scalar (batch shape (), got {shape})")
        values = base.enumerate_support(expand=False).reshape(-1)
        return Component(name, (), values=values, log_mass=base.log_prob(values).double().cpu())
    try:
        with seeded_global_rng(torch.Generator().manual_seed(0)):  # the user's global RNG untouched
            probe = base.sample()
    except NotImplementedError:
        raise ValueError(
            f"the prior of {name!r} ({type(base).__name__}) cannot be sampled: an unknown parameter needs "
            "a proper prior distribution"
        ) from None
    try:
        icdf = bool(torch.isfinite(base.icdf(torch.full_like(probe, 0.5))).all())
    except (NotImplementedError, AttributeError):
        icdf = False
    return Component(name, shape, base, icdf=icdf, probe=probe)


@dataclasses.dataclass(frozen=True)
class Proposal:
    """Where a round places its nodes, in the probit space ``v = Phi^-1(F(theta))`` of the components
    with an inverse CDF (the prior is ``N(0, I)`` there): ``N(mean, scale scale^T)``."""

    mean: Tensor  # (width,)
    scale: Tensor  # (width, width), lower triangular

    @classmethod
    def prior(cls, width: int) -> Proposal:
        return cls(torch.zeros(width, dtype=torch.float64), torch.eye(width, dtype=torch.float64))

    def log_density(self, v: Tensor) -> Tensor:
        """``log N(v; mean, scale scale^T)`` for rows ``v`` of shape ``(n, width)``."""
        z = torch.linalg.solve_triangular(self.scale, (v - self.mean).T, upper=False).T
        log_det = torch.log(torch.diagonal(self.scale)).sum()
        return -0.5 * (z**2).sum(1) - log_det - 0.5 * v.shape[1] * math.log(2 * math.pi)

    def refit(self, v: Tensor, weight: Tensor, count: int) -> Proposal:
        """The next round's proposal from weighted points ``v`` (rows) of the posterior: their weighted
        covariance, doubled for the tails, plus this proposal's covariance times the squared spacing of
        its ``count`` points at the weighted mean, ``(count q(mean))^(-2 / width)`` in its whitened
        coordinates. The spacing keeps the next proposal as wide as the gaps that this proposal's points
        could not resolve when few of them carry the weight."""
        width = v.shape[1]
        mean = (weight[:, None] * v).sum(0)
        centred = v - mean
        covariance = 2 * (weight[:, None] * centred).T @ centred
        whitened_log_density = self.log_density(mean[None])[0] + torch.log(torch.diagonal(self.scale)).sum()
        # at most twice this proposal's scale: a mean far in its tail (no points there) would overflow
        spacing2 = torch.exp((-2 * (math.log(count) + whitened_log_density) / width).clamp(max=math.log(4)))
        return Proposal(mean, torch.linalg.cholesky(covariance + spacing2 * self.scale @ self.scale.T))


def place_nodes(components: list[Component], count: int, proposal: Proposal, generator: torch.Generator):
    """One round's quadrature nodes: a list of ``{name: value}``, their log masses (a tensor: prior
    over proposal density, over ``count``, times the discrete values' probabilities) and their
    probit coordinates ``v`` (shape ``(count, width)``; the same row for each discrete combination).

    The components with an inverse CDF share ``count`` points of a scrambled Sobol set, mapped to
    ``v ~ proposal`` and then through ``F^-1(Phi(v))``; the others are prior draws (mass ``1 / count``);
    each point is combined with every value of the discrete components."""
    continuous = [c for c in components if c.values is None]
    count = count if continuous else 1  # only discrete parameters: one point, every combination of values
    width = sum(math.prod(c.shape) for c in continuous if c.icdf)
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    v = torch.zeros(count, width, dtype=torch.float64)
    log_mass = torch.full((count,), -math.log(count), dtype=torch.float64)
    if width:
        u = torch.quasirandom.SobolEngine(width, scramble=True, seed=seed).draw(count, dtype=torch.float64)
        v = proposal.mean + normal.icdf(u.clamp(1e-12, 1 - 1e-12)) @ proposal.scale.T
        log_mass += normal.log_prob(v).sum(1) - proposal.log_density(v)
    points: list[dict[str, Tensor]] = [{} for _ in range(count)]
    offset = 0
    for c in continuous:
        if c.icdf:
            m = math.prod(c.shape)
            dtype, device = c.probe.dtype, c.probe.device
            eps = torch.finfo(dtype).eps
            u = normal.cdf(v[:, offset : offset + m]).clamp(eps, 1 - eps).to(device=device, dtype=dtype)
            values, offset = c.distribution.icdf(u.reshape(count, *c.shape)), offset + m
        else:
            with seeded_global_rng(torch.Generator().manual_seed(seed + 1 + len(points[0]))):
                values = c.distribution.sample((count,))
        for point, value in zip(points, values, strict=True):
            point[c.name] = value
    discrete = [c for c in components if c.values is not None]
    nodes, masses, rows = [], [], []
    for i, point in enumerate(points):
        for combination in itertools.product(*(range(c.values.numel()) for c in discrete)):
            nodes.append(
                {**point, **{c.name: c.values[j] for c, j in zip(discrete, combination, strict=True)}}
            )
            masses.append(
                log_mass[i] + sum((c.log_mass[j] for c, j in zip(discrete, combination, strict=True)), 0.0)
            )
            rows.append(i)
    return nodes, torch.stack(masses), v[rows]


def node_log_weights(log_mass: Tensor, log_evidence: Tensor, log_weights: Tensor) -> Tensor:
    """Joint-posterior log-weights of one round's particles, ``log mass_k + log Z_k + log W_ki``
    (``log_weights`` normalised within each node), shape ``(nodes, particles)``."""
    return log_mass[:, None] + log_evidence[:, None] + torch.log_softmax(log_weights, dim=1)


def _describe(values: Mapping[str, Tensor]) -> str:
    def show(v: Tensor) -> str:
        return f"{float(v):.4g}" if v.numel() == 1 else str([round(float(e), 4) for e in v.reshape(-1)])

    return ", ".join(f"{k}={show(v)}" for k, v in values.items())


@dataclasses.dataclass
class Round:
    """One round of one chain: its nodes, their log masses and runs, and the weights these give."""

    points: list[dict[str, Tensor]]
    log_mass: Tensor  # (nodes,)
    runs: list[PosteriorSamples]

    def __post_init__(self):
        self.log_evidence = torch.stack(
            [r.trace["log_evidence"][-1].reshape(()).double().cpu() for r in self.runs]
        )
        bad = torch.isnan(self.log_evidence) | (self.log_evidence == math.inf)
        if bool(bad.any()):
            point = self.points[int(bad.nonzero()[0, 0])]
            raise ValueError(f"the run at the parameter node {_describe(point)} returned a NaN or +inf evidence")
        if not bool(torch.isfinite(self.log_evidence).any()):
            raise ValueError(
                "the evidence is zero at every node (the likelihood vanishes, or every run's weights "
                "died): the parameters' prior has no support where the data are likely"
            )
        particle = torch.stack(
            [
                torch.zeros(r.draws, dtype=torch.float64)
                if r.log_weights is None
                else r.log_weights[0].double().cpu()
                for r in self.runs
            ]
        )
        self.log_weights = node_log_weights(self.log_mass, self.log_evidence, particle)  # (nodes, particles)
        self.node_weights = (
            torch.softmax(self.log_weights.reshape(-1), 0).reshape(self.log_weights.shape).sum(1)
        )


def sample_with_parameters(
    model: Callable[..., InverseProblem] | InverseProblem,
    prior,
    sampler: Sampler,
    num_samples: int,
    *,
    parameters: Mapping[str, Prior] | None = None,
    nodes: int = 16,
    refine: int = 6,
    chains: int = 2,
    seed: int | None = None,
    progress: bool = True,
) -> PosteriorSamples:
    """Draws of ``x`` and of the forward model's unknown parameters ``theta`` from ``p(x, theta | y)``.

    Parameters
    ----------
    model : callable or InverseProblem
        ``model(**theta)`` returns the :class:`~posterior.InverseProblem` at ``theta`` (each value a
        tensor of its prior's shape), with the same ``y`` for every ``theta``. Or an ``InverseProblem``
        whose noise is a :class:`operators.PyroLikelihood` with latent sample sites besides the
        observed one: they are the unknown parameters, with the priors the Pyro model gives them.
    prior : DiffusionPrior
        The prior of ``x``.
    sampler : Sampler
        One that estimates the evidence: AFDPS, TDS, MCGdiff (or ExactPosterior for analytic priors).
    num_samples : int
        Particles per run, one run per node.
    parameters : mapping of str to distribution or tensor, optional
        The prior of each parameter (required with a callable ``model``, refused with a Pyro one): a
        torch or Pyro distribution with independent components (an inverse CDF places the nodes;
        components without one are prior draws; discrete distributions are enumerated), or a 1-D
        tensor of equally likely candidate values.
    nodes : int
        Nodes of the continuous parameters per round (a power of 2 balances the Sobol set best); each
        is combined with every value of the discrete ones.
    refine : int
        At most this many pilot rounds, the first with the prior's nodes, each later one with nodes
        where the earlier ones found the posterior (a Gaussian in probit space); a chain stops piloting
        once a pilot's nodes keep half their number effective. The result is a final round placed by
        the pilots (its own runs choose nothing, so its evidence stays unbiased). 0: the final round has
        the prior's nodes. Only components with an inverse CDF are refined.
    chains : int
        Independent chains, each with its own rounds: 2 or more give the evidence's standard error
        and the runs' agreement check.
    seed : int, optional
        The same seed gives the same result (nodes, runs and weights) on the same device.
    progress : bool
        A progress bar over the runs.

    Returns
    -------
    PosteriorSamples
        ``samples`` of shape ``(chains, n * num_samples, *prior.event_shape)``, ``n`` the final round's
        nodes, with ``log_weights`` (node mass, evidence and particle weight) and ``params[name]`` of
        shape ``(chains, n * num_samples, *shape)``. ``trace["log_evidence"]``: each chain's estimate
        of ``log p(y)``, shape ``(1, chains)``; ``trace["node_log_evidence"]`` and
        ``trace["node_weights"]``: each final-round node's ``log Z_hat`` and posterior weight, shape
        ``(chains, n)``; ``trace["effective_nodes"]``: the Kish ESS of the continuous nodes' weights
        per chain for each pilot round and (last column) the final round, shape ``(chains, 1 +
        refine)``, NaN for pilots a chain did not need (only with continuous parameters).
        ``config["runs"]``: the sampler runs made in all (``nfe`` counts one run's).
    """
    if not isinstance(sampler, (ParticleSampler, ExactPosterior)):
        raise ValueError(
            f"{type(sampler).__name__} does not estimate the evidence p(y | theta) that weights the "
            "parameters: use AFDPS, TDS or MCGdiff (or ExactPosterior for an analytic prior)"
        )
    if isinstance(sampler, ParticleSampler) and sampler.resample:
        raise ValueError("sample_with_parameters needs the weighted particles: use resample=False")
    num_samples = as_int(num_samples, "num_samples", minimum=1)
    nodes, chains = as_int(nodes, "nodes", minimum=1), as_int(chains, "chains", minimum=1)
    refine = as_int(refine, "refine", minimum=0)
    model, parameters = _model_and_priors(model, parameters)
    components = [component(name, spec) for name, spec in parameters.items()]
    width = sum(math.prod(c.shape) for c in components if c.values is None and c.icdf)
    fixed = [c.name for c in components if c.values is None and not c.icdf]
    if fixed and refine:
        warnings.warn(
            f"the priors of {fixed} have no inverse CDF: their nodes stay prior draws in every round",
            diagnostics.ConvergenceWarning,
            stacklevel=2,
        )
    refine = refine if width else 0  # nothing to refine without nodes placed by an inverse CDF
    generator, _ = make_generator(seed)
    start, measurement, finals, made = time.perf_counter(), [], [], []
    combinations = math.prod(c.values.numel() for c in components if c.values is not None)
    bar = tqdm(desc="parameter runs", unit="run", leave=True, dynamic_ncols=True, disable=not progress)

    def run_round(proposal: Proposal) -> tuple[Round, Tensor, Tensor]:
        """A round's runs, and its points' probit coordinates and weights (discrete values summed)."""
        points, log_mass, v = place_nodes(components, nodes, proposal, generator)
        runs = []
        for point in points:
            runs.append(_run_at(model, point, sampler, prior, num_samples, generator, measurement))
            bar.update()
        made.append(len(runs))
        this = Round(points, log_mass, runs)
        return this, v[::combinations], this.node_weights.reshape(-1, combinations).sum(1)

    effective = torch.full((chains, refine + 1), math.nan, dtype=torch.float64)
    for chain in range(chains):
        proposal, seen_v, seen_log_w = Proposal.prior(width), [], []
        for r in range(refine):  # pilot rounds, each placing the next one's nodes
            pilot, v, weights = run_round(proposal)
            effective[chain, r] = float(1 / (weights**2).sum())
            # fitted to every pilot's points: their weights (prior mass over proposal density, times the
            # evidence) estimate one posterior on one scale
            seen_v.append(v)
            seen_log_w.append((pilot.log_mass + pilot.log_evidence).reshape(-1, combinations).logsumexp(1))
            proposal = proposal.refit(torch.cat(seen_v), torch.softmax(torch.cat(seen_log_w), 0), nodes)
            if effective[chain, r] >= nodes / 2:
                break
        # the result: a round whose nodes the pilots placed, whose own runs chose nothing (unbiased)
        final, _, weights = run_round(proposal)
        effective[chain, -1] = float(1 / (weights**2).sum())
        finals.append(final)
    bar.close()
    return _combine(
        finals, effective, components, sum(made), prior, measurement[0], time.perf_counter() - start, refine
    )


def _run_at(model, point, sampler, prior, num_samples, generator, measurement: list) -> PosteriorSamples:
    """One run of ``sampler`` at the node ``point``; ``measurement`` holds the first node's ``y``
    digest, which every node must share. Its checks are judged later, by the node's weight."""
    problem = _problem_at(model, point)
    digest = measurement_digest(problem.y)
    if not measurement:
        measurement.append(digest)
    elif digest != measurement[0]:
        raise ValueError(
            f"the model returned a different y at {_describe(point)}: the evidence weighs values of theta "
            "against each other only for one measurement"
        )
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    with warnings.catch_warnings():
        for category in (diagnostics.ConvergenceWarning, diagnostics.DivergenceWarning):
            warnings.simplefilter("ignore", category)
        try:
            return sampler.sample(problem, prior, num_samples, seed=seed, progress=False)
        except Exception as err:
            err.add_note(f"(the run at the parameter node {_describe(point)})")
            raise


def _model_and_priors(model, parameters):
    """The callable ``model(**theta)`` and the priors, from the user's callable or Pyro problem."""
    if isinstance(model, InverseProblem):
        problem = model
        if not isinstance(problem.noise, PyroLikelihood):
            raise TypeError(
                "model must be a callable model(**theta) -> InverseProblem, or an InverseProblem whose "
                "noise is a PyroLikelihood with latent sites"
            )
        if parameters is not None:
            raise ValueError("the Pyro model gives the priors of its latent sites: leave parameters=None")
        parameters = problem.noise.latent_sites(problem.y[None])  # y itself: an operator output the model accepts
        if not parameters:
            raise ValueError(
                "the Pyro model has no latent sample site besides the observed one: nothing is unknown"
            )
        _check_names(parameters, "latent site names")

        def model(**theta):
            return InverseProblem(problem.operator, problem.noise.condition(**theta), problem.y)

        return model, parameters
    if not callable(model):
        raise TypeError(
            f"model must be callable (model(**theta) -> InverseProblem), got {type(model).__name__}"
        )
    if not isinstance(parameters, Mapping) or not parameters:
        raise ValueError("give the unknown parameters' priors: parameters={name: distribution, ...}")
    bad = [name for name in parameters if not isinstance(name, str) or not name.isidentifier()]
    if bad:
        raise ValueError(f"parameter names must be Python identifiers (model's keywords), got {bad}")
    _check_names(parameters, "parameter names")
    return model, dict(parameters)


def _check_names(parameters: Mapping[str, Prior], what: str) -> None:
    reserved = [name for name in parameters if name in RESERVED]
    if reserved:
        raise ValueError(f"{what} {reserved} are taken by the result's own variables {RESERVED}: rename them")


def _problem_at(model, point: dict[str, Tensor]) -> InverseProblem:
    """``model(**point)``, with an error that names the node and the prior when the model refuses it."""
    try:
        problem = model(**point)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"the forward model fails at {_describe(point)}, a value its prior allows: {err}. Give each "
            "parameter a prior with support only where the model is defined (e.g. LogNormal, or Uniform(a, "
            "b) with a > 0, for a noise level)"
        ) from err
    if not isinstance(problem, InverseProblem):
        raise TypeError(
            f"model(**theta) must return a posterior.InverseProblem, got {type(problem).__name__}"
        )
    if problem.batched:
        raise ValueError("model(**theta) must return a problem of one measurement (an unbatched y)")
    return problem


def _combine(finals: list[Round], effective, components, runs, prior, measurement, wall_time, refine):
    """One weighted chain per chain's final round, and its checks."""
    failed = [
        (float(w), run.verdict)
        for this in finals
        for w, run in zip(this.node_weights, this.runs, strict=True)
        if not run.verdict.ok and float(w) > HEAVY_NODE
    ]
    problems = []
    if failed:
        problems.append(
            f"{len(failed)} runs at parameter nodes that carry {100 * sum(w for w, _ in failed) / len(finals):.0f}% "
            f"of the posterior mass failed their own checks (first: {failed[0][1].problems[0]})"
        )
    first = finals[0].runs[0]
    draws = first.draws

    def per_chain(values):
        return torch.stack([torch.cat(v) for v in values])

    log_evidence = torch.stack([torch.logsumexp(t.log_mass + t.log_evidence, 0) for t in finals])
    result = PosteriorSamples(
        samples=per_chain([r.samples[0] for r in this.runs] for this in finals),
        log_weights=torch.stack([this.log_weights.reshape(-1) for this in finals]).to(first.samples.device),
        nfe=first.nfe,
        grad_evals=first.grad_evals,
        wall_time=wall_time,
        trace={
            "log_evidence": log_evidence[None],
            "node_log_evidence": torch.stack([t.log_evidence for t in finals]),
            "node_weights": torch.stack([t.node_weights for t in finals]),
            **({"effective_nodes": effective} if any(c.values is None for c in components) else {}),
        },
        sample_stats={
            "log_likelihood": per_chain([r.sample_stats["log_likelihood"][0] for r in t.runs] for t in finals),
            "node": torch.arange(len(finals[0].runs)).repeat_interleave(draws).expand(len(finals), -1).clone(),
        },
        sampler=first.sampler,
        config={
            **first.config,
            "parameters": {c.name: repr(c.distribution if c.values is None else c.values) for c in components},
            "nodes": len(finals[0].points),
            "refine": refine,
            "runs": runs,  # of the sampler, every round of every chain (nfe is per draw of one run)
        },
        kind=first.kind,
        measurement=measurement,
        params={
            c.name: torch.stack(
                [torch.stack([p[c.name] for p in t.points]).repeat_interleave(draws, 0) for t in finals]
            )
            for c in components
        },
    )
    diagnostics.check(result, prior=prior, problems=problems, stacklevel=4)
    return result
