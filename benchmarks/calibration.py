"""Calibration of every sampler on an exact mixture posterior: SBC ranks and credible-interval coverage.

``posterior.diagnostics.calibrate`` on a 2-D 25-mode mixture prior with one measurement row
(``sigma_y = 0.5``): ``--problems`` simulated ``(x*, y)`` pairs solved in one batched call, 99 draws
(or particles: one SMC run per problem) each. Reported: the coverage of the central 50/80/90/95%
intervals (binomial standard error ``sqrt(a (1 - a) / problems)``, 0.015 at 95% for 200 problems),
the Bonferroni-adjusted SBC chi-square p-value, TARP's KS p-value, and whether all pass. Marginal calibration is
necessary, not sufficient: a sampler can pass it and still be wrong for each ``y``
(``benchmarks/gmm.py`` measures that).

    python benchmarks/calibration.py exact afdps mcgdiff tds dps lml --problems 200

Prints a Markdown table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture
from posterior.utils import write_json

SAMPLERS = {
    "exact": lambda steps: post.samplers.ExactPosterior(),
    "afdps": lambda steps: post.samplers.AFDPS(steps=steps),
    "mcgdiff": lambda steps: post.samplers.MCGdiff(steps=steps),
    "tds": lambda steps: post.samplers.TDS(steps=steps),
    "dps": lambda steps: post.samplers.DPS(steps=steps),
    "lml": lambda steps: post.samplers.LevenbergMarquardtLangevin(steps=steps // 2),
}
LEVELS = (0.5, 0.8, 0.9, 0.95)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="+", choices=sorted(SAMPLERS))
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = GaussianMixture.grid(2, seed=0)
    operator = ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64))
    noise = ops.GaussianNoise(0.5)
    print(
        "| sampler | "
        + " | ".join(f"{int(100 * a)}% coverage" for a in LEVELS)
        + " | SBC p | TARP p | calibrated | time |"
    )
    print("|---|" + "---|" * (len(LEVELS) + 4))
    rows = []
    for name in args.samplers:
        start = time.perf_counter()
        report = post.diagnostics.calibrate(
            SAMPLERS[name](args.steps), prior, operator, noise, n_problems=args.problems, seed=args.seed
        )
        row = {
            "sampler": name,
            "coverage": report["coverage"],
            "sbc_pvalue": report["sbc_pvalue"],
            "tarp_pvalue": report["tarp_pvalue"],
            "calibrated": report["calibrated"],
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        cells = " | ".join(f"{row['coverage'][a]:.2f}" for a in LEVELS)
        verdict = "yes" if row["calibrated"] else "no"
        print(
            f"| {name} | {cells} | {row['sbc_pvalue']:.2g} | {row['tarp_pvalue']:.2g} | {verdict} | "
            f"{row['seconds']:.0f} s |",
            flush=True,
        )
    write_json(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
