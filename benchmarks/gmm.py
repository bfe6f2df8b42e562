"""Accuracy against exact posteriors: samplers on Gaussian-mixture priors with linear-Gaussian measurements.

For each problem (a mixture prior, a random operator with ``rows`` measurements, noise ``sigma_y``,
and ``y`` simulated from a prior draw) the exact posterior is a Gaussian mixture in closed form.
Each sampler's draws are compared with exact draws of the same size:

- ``sw/floor``: sliced Wasserstein-1 (1000 seeded directions) divided by the floor, the same
  distance between two independent exact sets (mean over 3 pairs);
- ``mode_tv``: total-variation error of the mode weights (assignment by largest responsibility);
- ``mean_err``: relative error of the posterior mean.

Usage::

    python benchmarks/gmm.py oracle dps dps-likelihood --steps 20 100 --num-samples 1000
    python benchmarks/gmm.py dps --quick          # a small subset
    python benchmarks/gmm.py afdps mcgdiff tds --steps 100 --particles 16 256 4096 --num-samples 2048
    python benchmarks/gmm.py afdps tds mcgdiff --grid --instances 3 --steps 100 --particles 2000
    python benchmarks/gmm.py afdps tds mcgdiff --grid --dims 8 --rows 1 2 4   # a quick subset
    python benchmarks/gmm.py exact afdps afdps-ddpm --grid --dims 8 80 --repeats 4 --runs 0

``oracle`` runs the exact posterior's denoiser through the same ancestral steps: the error that the
time discretisation alone leaves, a reference for every sampler at equal NFE. ``exact`` is N exact
draws (the metric's own spread), ``exact-ess50`` N/2 exact draws each taken twice (the best that a
weighted run with an effective sample size of N/2 can do once resampled).

``--grid``: the mixture protocol of MCGdiff (Cardoso et al. 2023, as their released experiment sets it
up), every sampler on every cell ``d`` in ``--dims`` (8, 80, 800) times ``d_y`` in ``--rows`` (1, 2, 4),
``--instances`` random problems per cell. An instance: the prior is ``GaussianMixture.grid(d,
seed=instance)`` (25 unit-covariance modes whose means tile a 5 x 5 grid of spacing 8 over the
coordinates, with random weights); the operator is a ``d_y x d`` matrix whose singular vectors are those
of a standard-normal matrix and whose singular values are replaced by ``d_y`` Uniform(0, 1) draws in
decreasing order, so that some measured directions are barely informative; ``y = A x* + sigma_y n`` for
a prior draw ``x*``. Everything is drawn in float64 from one seed per (d, d_y, instance). The noise
level is fixed across instances (``--sigma-y``, 0.5 by default, of the order of the typical singular
value, so that weakly measured directions stay uncertain; 0.1 sharpens the likelihood, a harder test
of the mode weights). The
exact posterior and evidence come in closed form (``prior.posterior``, ``prior.log_evidence``).

A call is what a user gets by default: ``sampler.sample(problem, prior, N, chains=1)`` with ``N =
--particles``. Its weighted particles are resampled (systematic, ``PosteriorSamples.resampled``) to
``N`` equally weighted draws, compared with ``N`` exact draws by sliced Wasserstein and divided by the
floor (the same distance between two exact sets of size ``N``); the mode TV uses the weighted
particles. The evidence check makes ``--runs R`` further independent runs (one ``chains=R`` call),
pools their estimates ``log Z_r`` as ``log mean_r exp(log Z_r)`` with the standard error of that
log-mean-exp from the spread over runs (``result.evidence()``, :mod:`posterior.evidence`), and
reports ``z = (pooled - log p(y)) / s.e.``.
Per sampler: the worst and median ``SW/floor`` over all cells and instances, and the worst single
call. ``--repeats K`` makes K calls per instance with different seeds and grades an instance by their
mean ratio (the evidence check runs with the first). Variants of the default AFDPS: ``afdps-ddpm``
(``x0_uncertainty=False``: the unwidened DDPM kernel, the default before), ``afdps-rho3`` (``rho = 3``),
``afdps-4runs`` (the particles split into 4 runs whose draws are pooled by their evidence estimates),
``afdps-ess08`` (``ess_threshold=0.8``), ``afdps-bisect`` (``max_bisections=2``); ``tds-x0u`` and
``mcgdiff-x0u`` are TDS and MCGdiff with ``x0_uncertainty=True``. The JSON (``--out``) is rewritten
after every call, so a long run can be inspected while it goes.

Prints a table and writes JSON (``--out``) with the command line that produced it; the JSON behind
the tables of ``docs/benchmarks.md`` lives in ``docs/results/`` (``benchmarks/render_docs.py``). Never
asserts on time.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.diagnostics import ConvergenceWarning
from posterior.priors import GaussianMixture
from posterior.samplers.resampling import resample_indices
from posterior.utils import write_json


@dataclass
class OracleAncestral:
    """A reference, not a sampler: the *exact* posterior denoiser run through the same ancestral steps
    and noise grid as the samplers. Its distance to the floor is the discretisation error alone."""

    steps: int

    def sample(self, problem, prior, num_samples, *, seed, progress, chains=1):
        start = time.perf_counter()
        x = prior.posterior(problem).sample(num_samples, steps=self.steps, seed=seed, method="ancestral")
        return post.PosteriorSamples(x[None], nfe=self.steps, wall_time=time.perf_counter() - start)


@dataclass
class ExactDraws:
    """A reference, not a sampler: ``fraction * N`` exact posterior draws, each repeated to make ``N``.
    With ``fraction = 1`` it measures the metric's own spread (exact against exact); with ``fraction < 1``
    it is the best that a weighted run whose effective sample size is ``fraction * N`` can do once
    resampled to ``N`` draws."""

    steps: int
    fraction: float = 1.0

    def sample(self, problem, prior, num_samples, *, seed, progress, chains=1):
        start = time.perf_counter()
        distinct = max(1, round(self.fraction * num_samples))
        x = prior.posterior(problem).sample(distinct, seed=seed)
        x = x[torch.arange(num_samples) * distinct // num_samples]
        return post.PosteriorSamples(x[None], nfe=0, wall_time=time.perf_counter() - start)


SAMPLERS = {
    "oracle": OracleAncestral,
    "exact": ExactDraws,
    "exact-ess50": lambda steps: ExactDraws(steps, 0.5),
    "dps": lambda steps: post.samplers.DPS(steps=steps, guidance="residual", step_size=1.0),
    "dps-likelihood": lambda steps: post.samplers.DPS(steps=steps, guidance="likelihood", step_size=1.0),
    "dds": lambda steps: post.samplers.DDS(steps=steps),
    "dds-ddim": lambda steps: post.samplers.DDS(steps=steps, eta=0.0),
    "reddiff-point": lambda steps: post.samplers.RedDiff(steps=steps, mode="point"),
    "reddiff-gaussian": lambda steps: post.samplers.RedDiff(steps=steps, mode="gaussian"),
    "lml": lambda steps: post.samplers.LevenbergMarquardtLangevin(steps=steps),
    "lml-mala": lambda steps: post.samplers.LevenbergMarquardtLangevin(
        steps=steps, corrector_steps=2, metropolis=True
    ),
    "dlg": lambda steps: post.samplers.DenoisingLangevinGibbs(burn_in=steps),
    "afdps": lambda steps: post.samplers.AFDPS(steps=steps),
    "afdps-noisy": lambda steps: post.samplers.AFDPS(steps=steps, twist="noisy"),
    "afdps-ddpm": lambda steps: post.samplers.AFDPS(steps=steps, x0_uncertainty=False),
    "afdps-rho3": lambda steps: post.samplers.AFDPS(steps=steps, rho=3.0),
    "afdps-4runs": lambda steps: post.samplers.AFDPS(steps=steps),
    "afdps-ess08": lambda steps: post.samplers.AFDPS(steps=steps, ess_threshold=0.8),
    "afdps-bisect": lambda steps: post.samplers.AFDPS(steps=steps, max_bisections=2),
    "tds": lambda steps: post.samplers.TDS(steps=steps),
    "tds-x0u": lambda steps: post.samplers.TDS(steps=steps, x0_uncertainty=True),
    "mcgdiff": lambda steps: post.samplers.MCGdiff(steps=steps),
    "mcgdiff-x0u": lambda steps: post.samplers.MCGdiff(steps=steps, x0_uncertainty=True),
}
RUNS_PER_CALL = {"afdps-4runs": 4}  # the particle budget split into runs, pooled by their evidence
PARTICLE_SAMPLERS = {name for name in SAMPLERS if name.startswith(("afdps", "tds", "mcgdiff"))}
DRAWS_PER_CHAIN = {"dlg": 10}  # MCMC samplers: num_samples / this many chains


@dataclass
class Problem:
    name: str
    prior: GaussianMixture
    problem: post.InverseProblem
    exact: GaussianMixture


def make_problem(kind: str, dim: int, rows: int, sigma_y: float, seed: int, image: bool = False) -> Problem:
    """A mixture prior (``separated``: 25 unit-covariance modes on a grid; ``overlapping``: 10 random
    modes with scale-2 means and unit covariance), a random ``(rows, dim)`` operator with N(0, 1)
    entries scaled by 1/sqrt(dim), and ``y = A x* + sigma_y n`` for a prior draw ``x*``."""
    event_shape = (1, 8, 8) if image else (dim,)
    if kind == "separated":
        prior = GaussianMixture.grid(dim, seed=seed, event_shape=event_shape)
    else:
        prior = GaussianMixture.random(
            dim, num_components=10, separation=2.0, std=1.0, seed=seed, event_shape=event_shape
        )
    g = torch.Generator().manual_seed(1000 + seed)
    A = ops.Matrix(torch.randn(rows, dim, generator=g, dtype=torch.float64) / dim**0.5, in_shape=event_shape)
    noise = ops.GaussianNoise(sigma_y)
    x_true = prior.sample(1, seed=2000 + seed)
    y = noise.sample(A(x_true), g)[0]
    problem = post.InverseProblem(A, noise, y)
    shape = "1x8x8" if image else f"d={dim}"
    return Problem(f"{kind} {shape} rows={rows} seed={seed}", prior, problem, prior.posterior(problem))


def default_problems(quick: bool, seeds: list[int], sigma_y: float) -> list[Problem]:
    cases = [
        ("separated", 2, 1, False),
        ("separated", 8, 1, False),
        ("separated", 8, 4, False),
        ("overlapping", 8, 1, False),
        ("separated", 64, 1, True),
        ("overlapping", 64, 8, True),
    ]
    if not quick:
        cases += [
            ("separated", 32, 2, False),
            ("separated", 256, 1, False),
            ("separated", 256, 128, False),
            ("overlapping", 256, 16, False),
        ]
    return [make_problem(k, d, r, sigma_y, s, image) for k, d, r, image in cases for s in seeds]


def evaluate(
    p: Problem,
    sampler_name: str,
    steps: int,
    num_samples: int,
    sampler_seed: int,
    particles: int | None = None,
    runs: int | None = None,
) -> dict:
    """One sampler on one problem, ``num_samples`` draws compared with exact ones.

    Particle samplers run ``runs`` independent SMC runs of ``particles`` each (default
    ``ceil(num_samples / particles)`` runs, a fixed budget); each run's weighted particles are
    resampled (multinomially) to ``num_samples // runs`` draws and the runs pooled. The mode TV uses
    the weighted particles themselves."""
    sampler = SAMPLERS[sampler_name](steps)
    weights = None
    if sampler_name in PARTICLE_SAMPLERS:
        chains = runs or -(-num_samples // particles)
        result = sampler.sample(
            p.problem, p.prior, particles, chains=chains, seed=sampler_seed, progress=False
        )
        W = torch.softmax(result.log_weights, dim=1)
        picks = torch.multinomial(
            W, num_samples // chains, replacement=True, generator=torch.Generator().manual_seed(0)
        )
        draws = result.samples[torch.arange(chains)[:, None], picks].reshape(-1, *result.event_shape)
        particles_flat, weights = result.flat(), result.weights()
        num_samples = draws.shape[0]
    else:
        per_chain = DRAWS_PER_CHAIN.get(sampler_name, num_samples)
        result = sampler.sample(
            p.problem, p.prior, per_chain, chains=num_samples // per_chain, seed=sampler_seed, progress=False
        )
        draws = particles_flat = result.flat()
    exact = lambda n, seed: p.exact.sample(n, seed=seed)  # noqa: E731
    sw_floor = metrics.floor(metrics.sliced_wasserstein, exact, num_samples, num_samples)
    sw = metrics.sliced_wasserstein(draws, exact(num_samples, 999))
    finite = bool(torch.isfinite(draws).all())
    return {
        "problem": p.name,
        "sampler": sampler_name
        if sampler_name not in PARTICLE_SAMPLERS
        else f"{sampler_name} {result.chains}x{particles}",
        "steps": steps,
        "particles": particles if sampler_name in PARTICLE_SAMPLERS else None,
        "runs": result.chains if sampler_name in PARTICLE_SAMPLERS else None,
        "nfe": result.nfe,
        "grad_evals": result.grad_evals,
        "sw": sw,
        "floor": sw_floor,
        "sw_over_floor": sw / sw_floor if finite else float("inf"),
        "mode_tv": metrics.mode_weight_tv(particles_flat, p.exact, weights=weights)
        if finite
        else float("nan"),
        "mean_err": metrics.mean_error(draws, p.exact.mean()) if finite else float("nan"),
        "wall_time": result.wall_time,
    }


def markdown_table(rows: list[dict]) -> str:
    """One line per problem and sampler, one column per step count: ``SW/floor (mode TV)``."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    steps = sorted({r["steps"] for r in rows})
    cell = {(r["problem"], r["sampler"], r["steps"]): r for r in rows}
    lines = [
        "| problem | sampler | " + " | ".join(f"{k} steps" for k in steps) + " |",
        "|---|---|" + "---|" * len(steps),
    ]
    for p in problems:
        for name in samplers:
            values = [cell.get((p, name, k)) for k in steps]
            text = [f"{v['sw_over_floor']:.1f} ({v['mode_tv']:.2f})" if v else "" for v in values]
            lines.append(f"| {p} | {name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


# -- the MCGdiff mixture protocol (--grid) -------------------------------------------------------
GRID_DIMS = (8, 80, 800)
GRID_ROWS = (1, 2, 4)


def grid_seed(dim: int, rows: int, instance: int) -> int:
    """The seed of one instance of cell ``(dim, rows)``: distinct over cells and instances (< 1000)."""
    return (1000 * dim + rows) * 1000 + instance


@dataclass
class GridProblem:
    """One instance of the mixture protocol, with the exact posterior and what is cached per problem:
    exact draws by ``(size, seed)`` and sliced-Wasserstein floors by size."""

    dim: int
    rows: int
    instance: int
    seed: int
    prior: GaussianMixture
    problem: post.InverseProblem
    exact: GaussianMixture
    log_evidence: float
    setup_time: float
    draws: dict = field(default_factory=dict)
    floors: dict = field(default_factory=dict)

    def exact_draws(self, n: int, seed: int) -> torch.Tensor:
        if (n, seed) not in self.draws:
            self.draws[n, seed] = self.exact.sample(n, seed=seed)
        return self.draws[n, seed]

    def floor(self, n: int) -> float:
        if n not in self.floors:
            self.floors[n] = metrics.floor(metrics.sliced_wasserstein, self.exact_draws, n, n)
        return self.floors[n]


def make_grid_problem(dim: int, rows: int, sigma_y: float, instance: int) -> GridProblem:
    """Instance ``instance`` of cell ``(dim, rows)`` (see the module docstring): the prior from the
    instance index, the operator, ``x*`` and the noise from ``grid_seed``, all in float64."""
    start = time.perf_counter()
    seed = grid_seed(dim, rows, instance)
    prior = GaussianMixture.grid(dim, seed=instance)
    f64 = torch.float64
    g = torch.Generator().manual_seed(seed)
    U, _, Vh = torch.linalg.svd(torch.randn(rows, dim, generator=g, dtype=f64), full_matrices=False)
    s = torch.sort(torch.rand(rows, generator=g, dtype=f64), descending=True).values
    A = ops.Matrix((U * s) @ Vh)
    noise = ops.GaussianNoise(sigma_y)
    x_true = prior.sample(1, seed=g)
    y = noise.sample(A(x_true), g)[0]
    problem = post.InverseProblem(A, noise, y)
    exact = prior.posterior(problem)
    log_evidence = float(prior.log_evidence(problem))
    return GridProblem(
        dim, rows, instance, seed, prior, problem, exact, log_evidence, time.perf_counter() - start
    )


def evaluate_grid(
    gp: GridProblem, sampler_name: str, steps: int, particles: int, runs: int, repeat: int = 0
) -> dict:
    """One call ``sample(problem, prior, particles, chains=1)`` graded against the exact posterior
    (``RUNS_PER_CALL``: the particles split into that many runs, pooled by their evidence), then
    (particle samplers, ``runs`` > 0) one ``chains=runs`` call of ``particles`` each for the
    log-evidence check. ``repeat`` > 0: the same call with another seed."""
    sampler = SAMPLERS[sampler_name](steps)
    is_particle = sampler_name in PARTICLE_SAMPLERS
    seed = gp.seed + 10**9 * repeat
    if is_particle:
        k = RUNS_PER_CALL.get(sampler_name, 1)
        result = sampler.sample(gp.problem, gp.prior, particles // k, chains=k, seed=seed, progress=False)
        weighted, weights = result.flat(), result.weights()
        draws = result.resampled(seed=0).flat()
        if k > 1:  # runs pooled by their evidence estimates: particle i of run r weighs W_ri Z_r / sum_s Z_s
            log_w = (result.log_weights + result.trace["log_evidence"][-1].double()[:, None]).reshape(1, -1)
            weights = torch.softmax(log_w[0], 0)
            draws = weighted[resample_indices(log_w, "systematic", torch.Generator().manual_seed(0))[0]]
    else:
        per_chain = DRAWS_PER_CHAIN.get(sampler_name, particles)
        result = sampler.sample(
            gp.problem, gp.prior, per_chain, chains=-(-particles // per_chain), seed=seed, progress=False
        )
        draws = weighted = result.flat()[:particles]
        weights = None
    start = time.perf_counter()
    n = draws.shape[0]
    floor = gp.floor(n)
    finite = bool(torch.isfinite(draws).all())
    sw = metrics.sliced_wasserstein(draws, gp.exact_draws(n, 999)) if finite else float("inf")
    row = {
        "dim": gp.dim,
        "rows": gp.rows,
        "instance": gp.instance,
        "seed": seed,
        "repeat": repeat,
        "sampler": sampler_name,
        "steps": steps,
        "particles": particles,
        "nfe": result.nfe,
        "vjp": result.grad_evals,
        "sw": sw,
        "floor": floor,
        "sw_over_floor": sw / floor if finite else float("inf"),
        "mode_tv": metrics.mode_weight_tv(weighted, gp.exact, weights=weights) if finite else float("nan"),
        "mean_err": metrics.mean_error(draws, gp.exact.mean()) if finite else float("nan"),
        "wall_time": result.wall_time,
        "log_evidence_exact": gp.log_evidence,
    }
    row["metric_time"] = time.perf_counter() - start
    if is_particle and "log_evidence" in result.trace:
        row["log_evidence"] = float(result.trace["log_evidence"][-1].reshape(-1)[0])
    if is_particle and runs > 0:
        with warnings.catch_warnings():  # the runs' disagreement is what the z-score measures
            warnings.simplefilter("ignore", ConvergenceWarning)
            extra = sampler.sample(
                gp.problem, gp.prior, particles, chains=runs, seed=seed + 500, progress=False
            )
        evidence = extra.evidence()  # posterior.evidence: log mean_r Z_r and its standard error
        pooled, se = evidence.log_z, evidence.standard_error
        error = pooled - gp.log_evidence
        row |= {
            "runs": runs,
            "log_evidence_runs": list(evidence.runs),
            "log_evidence_pooled": pooled,
            "log_evidence_se": se,
            "log_evidence_error": error,
            "log_evidence_z": error / se if se > 0 else float("nan"),
            "runs_wall_time": extra.wall_time,
        }
    return row


def instance_means(rows: list[dict], key: str) -> dict:
    """``key`` averaged over the repeated calls of each ``(dim, rows, instance)``, in first-seen order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dim"], r["rows"], r["instance"]), []).append(r[key])
    return {k: statistics.fmean(v) for k, v in groups.items()}


def grid_summary(rows: list[dict]) -> dict:
    """Per sampler: worst and median SW/floor over all cells and instances (each instance's mean over
    its repeated calls), mode TV, z-scores, cost."""
    out = {}
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == name]
        ratios = list(instance_means(mine, "sw_over_floor").values())
        z = [abs(r["log_evidence_z"]) for r in mine if math.isfinite(r.get("log_evidence_z", math.nan))]
        errors = [abs(r["log_evidence_error"]) for r in mine if "log_evidence_error" in r]
        out[name] = {
            "calls": len(mine),
            "repeats": len(mine) // len(ratios),
            "worst_sw_over_floor": max(ratios),
            "worst_call_sw_over_floor": max(r["sw_over_floor"] for r in mine),
            "median_sw_over_floor": statistics.median(ratios),
            "worst_mode_tv": max(r["mode_tv"] for r in mine),
            "median_mode_tv": statistics.median(r["mode_tv"] for r in mine),
            "largest_abs_z": max(z) if z else None,
            "median_abs_z": statistics.median(z) if z else None,
            "median_abs_log_evidence_error": statistics.median(errors) if errors else None,
            "nfe": sorted({r["nfe"] for r in mine}),
            "vjp": sorted({r["vjp"] for r in mine}),
            "mean_wall_time": statistics.fmean(r["wall_time"] for r in mine),
        }
    return out


def markdown_grid(data: dict) -> str:
    """The tables of ``benchmarks/render_docs.py`` (table ``gmm-grid``), from the same renderer."""
    spec = importlib.util.spec_from_file_location("render_docs", Path(__file__).with_name("render_docs.py"))
    render_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_docs)
    return "\n".join(render_docs.gmm_grid(data))


def run_grid(args: argparse.Namespace, command: str) -> list[dict]:
    if len(args.steps) != 1 or len(args.particles) != 1:
        raise SystemExit("--grid takes one --steps and one --particles value")
    steps, particles = args.steps[0], args.particles[0]
    start = time.perf_counter()
    rows: list[dict] = []
    data = {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "complete": False}
    calls = len(args.dims) * len(args.rows) * args.instances * len(args.samplers) * args.repeats
    print(
        f"grid: d {args.dims} x d_y {args.rows} x {args.instances} instances x {len(args.samplers)} samplers "
        f"= {calls} calls; {steps} steps, {particles} particles, {args.runs} evidence runs, "
        f"sigma_y {args.sigma_y}",
        flush=True,
    )
    for dim, num_rows, instance in itertools.product(args.dims, args.rows, range(args.instances)):
        gp = make_grid_problem(dim, num_rows, args.sigma_y, instance)
        t = time.perf_counter()
        gp.floor(particles)
        print(
            f"d={dim} d_y={num_rows} instance {instance}: exact posterior {gp.setup_time:.1f} s, "
            f"floor {time.perf_counter() - t:.1f} s, log p(y) {gp.log_evidence:.3f}",
            flush=True,
        )
        for name, repeat in itertools.product(args.samplers, range(args.repeats)):
            r = evaluate_grid(gp, name, steps, particles, args.runs if repeat == 0 else 0, repeat)
            rows.append(r)
            z = r.get("log_evidence_z")
            evidence = (
                f"log Z {r['log_evidence_pooled']:.3f} +- {r['log_evidence_se']:.3f} (z {z:+.2f})"
                if z is not None
                else ""
            )
            print(
                f"  [{len(rows)}/{calls}] {name:<8} SW/floor {r['sw_over_floor']:6.2f}  mode TV "
                f"{r['mode_tv']:.3f}  NFE {r['nfe']} VJP {r['vjp']}  {r['wall_time']:.1f} s "
                f"(+{r.get('runs_wall_time', 0.0):.1f} s runs, {r['metric_time']:.1f} s metrics)  {evidence}",
                flush=True,
            )
            data |= {"rows": rows, "summary": grid_summary(rows), "seconds": time.perf_counter() - start}
            write_json(args.out, data)
    data["complete"] = True
    write_json(args.out, data)
    print("\n" + markdown_grid(data))
    print(f"\n{len(rows)} calls in {time.perf_counter() - start:.0f} s; JSON written to {args.out}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="+", choices=sorted(SAMPLERS))
    parser.add_argument(
        "--steps", type=int, nargs="+", default=None, help="default 20 100 1000 (--grid: 100)"
    )
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument(
        "--particles",
        type=int,
        nargs="+",
        default=None,
        help="particles per SMC run (particle samplers); default 1024 (--grid: 2000, also the draws of "
        "the other samplers)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=None,
        help="independent SMC runs (default: num_samples / particles; --grid: the extra runs of the "
        "log-evidence check, default 4, 0 skips it)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sigma-y", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="small problems only")
    parser.add_argument("--only", nargs="+", default=None, help="problems whose name contains one of these")
    parser.add_argument("--grid", action="store_true", help="the MCGdiff mixture protocol (module docstring)")
    parser.add_argument("--dims", type=int, nargs="+", default=list(GRID_DIMS), help="--grid: dimensions d")
    parser.add_argument(
        "--rows", type=int, nargs="+", default=list(GRID_ROWS), help="--grid: measurements d_y"
    )
    parser.add_argument("--instances", type=int, default=3, help="--grid: random problems per cell")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="--grid: calls per sampler and instance, each with its own seed; an instance's ratio is "
        "their mean (the log-evidence check runs with the first)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=None, help="default benchmarks/results/gmm.json (--grid: gmm_grid.json)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.steps is None:
        args.steps = [100] if args.grid else [20, 100, 1000]
    if args.particles is None:
        args.particles = [2000] if args.grid else [1024]
    if args.out is None:
        args.out = Path("benchmarks/results") / ("gmm_grid.json" if args.grid else "gmm.json")
    command = shlex.join(["python", "benchmarks/gmm.py", *(sys.argv[1:] if argv is None else argv)])
    if args.grid:
        if args.runs is None:
            args.runs = 4
        return run_grid(args, command)

    start = time.perf_counter()
    rows = []
    problems = default_problems(args.quick, args.seeds, args.sigma_y)
    if args.only:
        problems = [p for p in problems if any(key in p.name for key in args.only)]
    header = f"{'problem':<40} {'sampler':<16} {'steps':>5} {'NFE':>5} {'SW/floor':>9} {'mode TV':>8} {'mean err':>9} {'time s':>7}"
    print(header)
    print("-" * len(header))
    for p in problems:
        for name in args.samplers:
            for steps, particles in itertools.product(
                args.steps, args.particles if name in PARTICLE_SAMPLERS else [None]
            ):
                r = evaluate(
                    p, name, steps, args.num_samples, sampler_seed=0, particles=particles, runs=args.runs
                )
                rows.append(r)
                print(
                    f"{r['problem']:<40} {r['sampler']:<16} {steps:>5} {r['nfe']:>5} {r['sw_over_floor']:>9.2f} "
                    f"{r['mode_tv']:>8.3f} {r['mean_err']:>9.3f} {r['wall_time']:>7.2f}",
                    flush=True,
                )
    write_json(
        args.out, {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    )
    if args.markdown:
        print("\n" + markdown_table(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s; JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
