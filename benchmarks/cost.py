"""Cost of the samplers on the bundled digits prior: wall time over bare network time at equal NFE.

For each sampler, box inpainting of one held-out digit with ``--batch`` particles/draws in one call.
In the same run the bare network is timed on a batch of the same size (the median of ``--repeats``
sweeps of ``NFE`` calls, interleaved with the sampler runs), so that

    overhead = sampler wall time / (NFE x one bare network call)

is a ratio of two numbers measured together: 1.0 means the sampler costs nothing beyond its network
evaluations. VJPs (backpropagations through the network) count in the sampler's time, not in NFE.

    python benchmarks/cost.py afdps mcgdiff tds dps reddiff --steps 50 --batch 64

Threads pinned (``--threads``, default 1). Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior.priors import pretrained
from posterior.utils import write_json

SAMPLERS = {
    "dps": lambda steps: post.samplers.DPS(steps=steps),
    "reddiff": lambda steps: post.samplers.RedDiff(steps=steps),
    "afdps": lambda steps: post.samplers.AFDPS(steps=steps),
    "mcgdiff": lambda steps: post.samplers.MCGdiff(steps=steps),
    "tds": lambda steps: post.samplers.TDS(steps=steps),
}


def inpainting_problem(prior) -> post.InverseProblem:
    """The upper half of a 16x16 image hidden, Gaussian noise 0.05 (a prior draw, so no data download)."""
    truth = prior.sample(1, steps=20, seed=0)
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    noise = ops.GaussianNoise(0.05)
    return post.InverseProblem(
        operator, noise, noise.sample(operator(truth), torch.Generator().manual_seed(1))[0]
    )


def bare_network_seconds(prior, batch: int, calls: int) -> float:
    """Seconds for ``calls`` denoiser calls on a batch of ``batch`` under ``no_grad``."""
    x = torch.randn(batch, *prior.event_shape, generator=torch.Generator().manual_seed(0))
    sigmas = torch.logspace(1.5, -2, calls)
    with torch.no_grad():
        start = time.perf_counter()
        for s in sigmas:
            prior.denoise(x, float(s))
        return time.perf_counter() - start


def measure(name: str, steps: int, batch: int, repeats: int, prior, problem) -> dict:
    sampler = SAMPLERS[name](steps)
    runs, bare = [], []
    for r in range(repeats):
        result = sampler.sample(problem, prior, batch, seed=r, progress=False)
        runs.append(result.wall_time)
        bare.append(bare_network_seconds(prior, batch, result.nfe))
    wall, network = statistics.median(runs), statistics.median(bare)
    return {
        "sampler": name,
        "steps": steps,
        "batch": batch,
        "nfe": result.nfe,
        "vjp": result.grad_evals,
        "wall_time": wall,
        "network_time": network,
        "overhead": wall / network,
        "ms_per_particle_step": 1e3 * wall / (result.nfe * batch),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="+", choices=sorted(SAMPLERS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = pretrained("digits")
    problem = inpainting_problem(prior)
    header = f"{'sampler':<10} {'NFE':>5} {'VJP':>5} {'wall s':>8} {'network s':>10} {'overhead':>9} {'ms/particle-step':>17}"
    print(header)
    print("-" * len(header))
    rows = []
    for name in args.samplers:
        r = measure(name, args.steps, args.batch, args.repeats, prior, problem)
        rows.append(r)
        print(
            f"{name:<10} {r['nfe']:>5} {r['vjp']:>5} {r['wall_time']:>8.2f} {r['network_time']:>10.2f} "
            f"{r['overhead']:>9.2f} {r['ms_per_particle_step']:>17.3f}",
            flush=True,
        )
    write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
