"""Crossing modes: the MCMC samplers' starts on the separated mixtures of the grid protocol.

On ``GaussianMixture.grid(d)`` priors (25 unit-covariance modes, spacing 8) with a few measurement rows the
posterior has several separated modes, and the Markov chains of DLG and the annealed particles of LML do
not move between them: their mode weights are those of their start. This compares, on the d = 8 cells of
``benchmarks/gmm.py --grid`` (the same instances, ``make_grid_problem``), today's starts with starts drawn
from an AFDPS population (``start="smc"``, ``start_particles`` per chain or draw):

    python benchmarks/mcmc_modes.py                       # every configuration, d_y 1 2 4, 3 instances
    python benchmarks/mcmc_modes.py --configs dlg-guided dlg-smc-10-s2 --rows 2

2000 draws per run (DLG: 200 chains x 10 draws, burn-in 100, thin 5; LML: 2000 draws, 100 levels), graded
as in ``gmm.py``: sliced Wasserstein to 2000 exact draws over the exact-vs-exact floor. Writes JSON
(``--out``, default ``docs/results/mcmc-modes.json``) with the command, every row and per configuration
the worst and median ratio, NFE per draw and wall time. Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gmm  # noqa: E402  (benchmarks/gmm.py: the grid instances)

import posterior as post  # noqa: E402

S = post.samplers
DRAWS, PER_CHAIN = 2000, 10


def dlg(**kwargs):
    return S.DenoisingLangevinGibbs(burn_in=100, **kwargs)


CONFIGS = {  # name -> (sampler, draws per chain); -sN: DLG's highest level N
    "dlg-guided": (lambda: dlg(start="guided"), PER_CHAIN),  # the default (sigma_high 20)
    "dlg-guided-s2": (lambda: dlg(start="guided", sigma_high=2.0), PER_CHAIN),
    "dlg-smc-1-s20": (lambda: dlg(start="smc", start_particles=1, sigma_high=20.0), PER_CHAIN),
    "dlg-smc-10-s20": (lambda: dlg(start="smc", start_particles=10, sigma_high=20.0), PER_CHAIN),
    "dlg-smc-1-s2": (lambda: dlg(start="smc", start_particles=1, sigma_high=2.0), PER_CHAIN),
    "dlg-smc-10-s2": (lambda: dlg(start="smc", start_particles=10, sigma_high=2.0), PER_CHAIN),
    "lml-anneal": (lambda: S.LevenbergMarquardtLangevin(steps=100, start="anneal"), DRAWS),
    "lml-smc-1": (lambda: S.LevenbergMarquardtLangevin(steps=100, start="smc", start_particles=1), DRAWS),
    "lml-smc-5": (lambda: S.LevenbergMarquardtLangevin(steps=100, start="smc", start_particles=5), DRAWS),
    "afdps": (lambda: S.AFDPS(steps=100, resample=True), DRAWS),  # the population alone, for reference
}


def run(configs, dims, rows, instances, sigma_y, out: Path, command: str) -> dict:
    results = []
    data = {"command": command}
    for dim in dims:
        for r in rows:
            for instance in range(instances):
                gp = gmm.make_grid_problem(dim, r, sigma_y, instance)
                floor = gp.floor(DRAWS)
                exact = gp.exact_draws(DRAWS, 999)
                for name in configs:
                    make, per_chain = CONFIGS[name]
                    result = make().sample(
                        gp.problem,
                        gp.prior,
                        per_chain,
                        chains=DRAWS // per_chain,
                        seed=gp.seed,
                        progress=False,
                    )
                    draws = result.flat()
                    sw = post.metrics.sliced_wasserstein(draws, exact)
                    row = {
                        "config": name,
                        "dim": dim,
                        "rows": r,
                        "instance": instance,
                        "sw_over_floor": sw / floor,
                        "mode_tv": post.metrics.mode_weight_tv(draws, gp.exact),
                        "nfe": result.nfe,
                        # a chain's NFE buys its per_chain draws; every LML or AFDPS draw costs all of them
                        "nfe_per_draw": result.nfe / per_chain if per_chain < DRAWS else result.nfe,
                        "wall_time": result.wall_time,
                    }
                    results.append(row)
                    print(
                        f"d={dim} d_y={r} #{instance} {name:12s} sw/floor {row['sw_over_floor']:6.2f} "
                        f"tv {row['mode_tv']:.3f} nfe {result.nfe} {result.wall_time:6.1f}s",
                        flush=True,
                    )
                    data |= {"rows": results, "summary": summary(results)}
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(data, indent=1))
    return data


def summary(rows: list[dict]) -> dict:
    """Per configuration: worst and median SW/floor and mode TV, NFE per draw, mean wall time."""
    out = {}
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        ratios = [r["sw_over_floor"] for r in mine]
        out[name] = {
            "cells": len(mine),
            "worst": max(ratios),
            "median": statistics.median(ratios),
            "worst_mode_tv": max(r["mode_tv"] for r in mine),
            "nfe_per_draw": statistics.median(r["nfe_per_draw"] for r in mine),
            "wall_time": statistics.mean(r["wall_time"] for r in mine),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dims", type=int, nargs="+", default=[8])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--sigma-y", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("docs/results/mcmc-modes.json"))
    args = parser.parse_args(argv)
    command = "python benchmarks/mcmc_modes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    data = run(args.configs, args.dims, args.rows, args.instances, args.sigma_y, args.out, command.strip())
    data["seconds"] = time.perf_counter() - start
    args.out.write_text(json.dumps(data, indent=1))
    for name, s in data["summary"].items():
        print(
            f"| {name} | {s['worst']:.1f} | {s['median']:.1f} | {s['worst_mode_tv']:.2f} | "
            f"{s['nfe_per_draw']:.0f} | {s['wall_time']:.1f} |"
        )
    return data


if __name__ == "__main__":
    main()
