"""Two summed sources against their exact joint posterior: the joint sampler's guidances and AFDPS.

``x`` follows a 3-mode and ``h`` a 2-mode mixture in 2-D (std 0.5), ``y = x + h + N(0, 0.3^2)``; the
exact joint posterior is a 6-mode mixture on the stack (the problem of ``tests/samplers/test_joint.py``
and ``docs/dehazing.md``). Each row: sliced Wasserstein-1 of ``--draws`` (2000) draws to as many exact
ones, divided by the floor (the same distance between exact sets, mean over 3 pairs), for the joint
and for each source's marginal. AFDPS splits its particles into 1 or 8 runs; each run's weighted
particles are resampled systematically to its size (``PosteriorSamples.resampled``) before the runs
are pooled, so the weights count (one row ignores them, to show what that costs).

    python benchmarks/joint_toy.py --out docs/results/joint-toy.json

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior import metrics
from posterior.priors import GaussianMixture, StackedPrior
from posterior.utils import write_json

SAMPLERS = {  # label -> (sampler, runs, whether to use the SMC weights)
    "joint pigdm": (post.samplers.JointPosterior(steps=100, guidance="pigdm"), 1, True),
    "joint dps": (post.samplers.JointPosterior(steps=100, guidance="dps"), 1, True),
    "joint projection": (post.samplers.JointPosterior(steps=100, guidance="projection"), 1, True),
    "joint projection, step size 4": (
        post.samplers.JointPosterior(steps=100, guidance="projection", step_size=4.0),
        1,
        True,
    ),
    "afdps, 1 run": (post.samplers.AFDPS(steps=100), 1, True),
    "afdps, 8 runs": (post.samplers.AFDPS(steps=100), 8, True),
    "afdps, 1 run, weights ignored": (post.samplers.AFDPS(steps=100), 1, False),
}


def summed_mixtures():
    """x ~ 3-mode and h ~ 2-mode mixtures in 2-D (std 0.5), y = x + h + N(0, 0.3^2): the stacked prior,
    the joint prior as one 6-mode mixture on the stack, and the problem (``tests/samplers/test_joint.py``
    uses this definition too)."""
    px = GaussianMixture.random(2, num_components=3, separation=3.0, std=0.5, seed=0, event_shape=(1, 2))
    ph = GaussianMixture.random(2, num_components=2, separation=3.0, std=0.5, seed=1, event_shape=(1, 2))
    pairs = [(i, j) for i in range(3) for j in range(2)]
    means = torch.stack([torch.cat([px.means[i], ph.means[j]]) for i, j in pairs])  # (6, 2, 2)
    weights = torch.stack([px.weights[i] * ph.weights[j] for i, j in pairs])
    joint = GaussianMixture(means, weights, torch.full((6,), 0.25, dtype=torch.float64))
    A = ops.Matrix(torch.cat([torch.eye(2), torch.eye(2)], 1).double(), in_shape=(2, 2))
    noise = ops.GaussianNoise(0.3)
    y = noise.sample(A(joint.sample(1, seed=7)), torch.Generator().manual_seed(3))[0]
    return StackedPrior([px, ph]), joint, post.InverseProblem(A, noise, y)


def draws(n: int, sampler, runs: int, weighted: bool, prior, problem) -> torch.Tensor:
    """``n`` draws: ``runs`` runs of ``n / runs`` each, weighted runs resampled (if ``weighted``)."""
    result = sampler.sample(problem, prior, n // runs, chains=runs, seed=0, progress=False)
    return result.resampled().flat() if weighted else result.flat()


def sw_over_floor(x: torch.Tensor, exact, part: slice) -> float:
    """SW of ``x[:, part]`` to exact draws over the exact-vs-exact floor."""

    def sw(a, b):
        return metrics.sliced_wasserstein(a[:, part], b[:, part])

    n = x.shape[0]
    floor = metrics.floor(sw, lambda m, s: exact.sample(m, seed=s), n, n)
    return sw(x, exact.sample(n, seed=11)) / floor


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2000, help="draws per sampler (a multiple of 8)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/joint_toy.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prior, joint, problem = summed_mixtures()
    exact = joint.posterior(problem)
    print("| sampler | joint | source x | source h |\n|---|---|---|---|")
    rows = []
    for name, spec in SAMPLERS.items():
        x = draws(args.draws, *spec, prior, problem)
        row = {
            "sampler": name,
            "joint": sw_over_floor(x, exact, slice(None)),
            "source_x": sw_over_floor(x, exact, slice(0, 1)),
            "source_h": sw_over_floor(x, exact, slice(1, 2)),
        }
        rows.append(row)
        print(f"| {name} | {row['joint']:.1f} | {row['source_x']:.1f} | {row['source_h']:.1f} |", flush=True)
    command = shlex.join(["python", "benchmarks/joint_toy.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "rows": rows})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
