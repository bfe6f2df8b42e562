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

``oracle`` runs the exact posterior's denoiser through the same ancestral steps: the error that the
time discretisation alone leaves, a reference for every sampler at equal NFE.

Prints a table and writes JSON (``--out``) with the command line that produced it; the JSON behind
the tables of ``docs/benchmarks.md`` lives in ``docs/results/`` (``benchmarks/render_docs.py``). Never
asserts on time.
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.priors import GaussianMixture
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


SAMPLERS = {
    "oracle": OracleAncestral,
    "dps": lambda steps: post.samplers.DPS(steps=steps, guidance="residual", step_size=1.0),
    "dps-likelihood": lambda steps: post.samplers.DPS(steps=steps, guidance="likelihood", step_size=1.0),
    "reddiff-point": lambda steps: post.samplers.RedDiff(steps=steps, mode="point"),
    "reddiff-gaussian": lambda steps: post.samplers.RedDiff(steps=steps, mode="gaussian"),
    "lml": lambda steps: post.samplers.LevenbergMarquardtLangevin(steps=steps),
    "lml-mala": lambda steps: post.samplers.LevenbergMarquardtLangevin(
        steps=steps, corrector_steps=2, metropolis=True
    ),
    "dlg": lambda steps: post.samplers.DenoisingLangevinGibbs(burn_in=steps),
    "afdps": lambda steps: post.samplers.AFDPS(steps=steps),
    "afdps-noisy": lambda steps: post.samplers.AFDPS(steps=steps, twist="noisy"),
    "tds": lambda steps: post.samplers.TDS(steps=steps),
    "mcgdiff": lambda steps: post.samplers.MCGdiff(steps=steps),
}
PARTICLE_SAMPLERS = {"afdps", "afdps-noisy", "tds", "mcgdiff"}
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="+", choices=sorted(SAMPLERS))
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 100, 1000])
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument(
        "--particles", type=int, nargs="+", default=[1024], help="particles per SMC run (particle samplers)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="independent SMC runs (default: num_samples / particles)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sigma-y", type=float, default=0.5)
    parser.add_argument("--quick", action="store_true", help="small problems only")
    parser.add_argument("--only", nargs="+", default=None, help="problems whose name contains one of these")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gmm.json"))
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

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
    command = shlex.join(["python", "benchmarks/gmm.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(
        args.out, {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    )
    if args.markdown:
        print("\n" + markdown_table(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s; JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
