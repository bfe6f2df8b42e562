"""Calibration of every sampler: SBC ranks, central-interval and HPD coverage, TARP.

``posterior.diagnostics.calibrate`` on three problems, ``--problems`` simulated ``(x*, y)`` pairs each,
solved in one batched call (one chain, or one SMC run, per problem):

- ``separated``: a 2-D 25-mode grid mixture (spacing 8, unit std), one measurement row, ``sigma_y = 0.5``;
- ``overlapping``: an 8-D 10-mode mixture (separation 2, unit std), 4 random rows, ``sigma_y = 0.5``;
- ``digits``: the bundled digits prior, the central 8x8 block hidden, ``sigma_y = 0.05``, the truths
  held-out test images (not prior draws: a prior that misses the data shows up here too).

Reported per sampler: the coverage of central 50/90% intervals and 50/90% HPD regions (binomial
standard error ``sqrt(a (1 - a) / problems)``), the ECDF-test p-values (SBC ranks Bonferroni-adjusted
over coordinates, HPD ranks, TARP) and the verdict. ``--false-alarm N`` instead runs the exact sampler
over N seeds of the separated problem and reports how often each test rejects.

    python benchmarks/calibration.py --problem separated exact afdps mcgdiff tds dps lml dlg reddiff
    python benchmarks/calibration.py --problem digits afdps dps reddiff --problems 100 --draws 20 --steps 50
    python benchmarks/calibration.py --false-alarm 500

Prints a Markdown table and writes JSON (with the command line; ``--out``). Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
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
    "dds": lambda steps: post.samplers.DDS(steps=steps),
    "lml": lambda steps: post.samplers.LevenbergMarquardtLangevin(steps=steps // 2),
    "dlg": lambda steps: post.samplers.DenoisingLangevinGibbs(burn_in=steps, thin=2),
    "reddiff": lambda steps: post.samplers.RedDiff(steps=steps, init_noise=1.0),
    "reddiff-gaussian": lambda steps: post.samplers.RedDiff(steps=steps, mode="gaussian"),
    "joint": lambda steps: post.samplers.JointPosterior(steps=steps),  # one source: PiGDM guidance
}
LEVELS = (0.5, 0.9)


def make_problem(name: str, n: int):
    """``(prior, operator, noise, truths or None)``."""
    if name == "separated":
        prior = GaussianMixture.grid(2, seed=0)
        return (
            prior,
            ops.Matrix(torch.tensor([[0.6, 0.8]], dtype=torch.float64)),
            ops.GaussianNoise(0.5),
            None,
        )
    if name == "overlapping":
        prior = GaussianMixture.random(8, num_components=10, separation=2.0, std=1.0, seed=0)
        A = torch.randn(4, 8, generator=torch.Generator().manual_seed(1000), dtype=torch.float64) / 8**0.5
        return prior, ops.Matrix(A), ops.GaussianNoise(0.5), None
    from posterior.data import digits

    prior = post.priors.pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 4, 4, 8, 8)
    return prior, operator, ops.GaussianNoise(0.05), digits("test")[:n]


def false_alarm(seeds: int, problems: int) -> dict:
    """Rejection rate of each test for exact draws on the separated problem over ``seeds`` seeds."""
    prior, operator, noise, _ = make_problem("separated", problems)
    counts = dict.fromkeys(["sbc", "hpd", "tarp", "coverage", "hpd coverage", "any"], 0)
    for seed in range(seeds):
        r = post.diagnostics.calibrate(
            post.samplers.ExactPosterior(), prior, operator, noise, n_problems=problems, seed=seed
        )
        se = r.coverage_se
        counts["sbc"] += r.sbc_pvalue <= r.alpha
        counts["hpd"] += r.hpd_pvalue <= r.alpha
        counts["tarp"] += r.tarp_pvalue <= r.alpha
        counts["coverage"] += any(abs(r.coverage[a] - a) > 3 * se[a] for a in se)
        counts["hpd coverage"] += any(abs(r.hpd_coverage[a] - a) > 3 * se[a] for a in se)
        counts["any"] += not r.calibrated
    rates = {k: v / seeds for k, v in counts.items()}
    print(f"| test | false-alarm rate over {seeds} seeds | s.e. |\n|---|---|---|")
    for k, rate in rates.items():
        print(f"| {k} | {rate:.3f} | {(rate * (1 - rate) / seeds) ** 0.5:.3f} |")
    return rates


def main(argv: list[str] | None = None) -> list[dict] | dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="*", help=f"any of {', '.join(SAMPLERS)}")
    parser.add_argument("--problem", choices=["separated", "overlapping", "digits"], default="separated")
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--draws", type=int, default=99)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--false-alarm", type=int, default=0, metavar="SEEDS")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    unknown = set(args.samplers) - set(SAMPLERS)
    if unknown:
        parser.error(f"unknown sampler(s) {sorted(unknown)}; choose from {', '.join(SAMPLERS)}")
    torch.set_num_threads(args.threads)
    out = args.out or Path(
        f"benchmarks/results/calibration_{'false_alarm' if args.false_alarm else args.problem}.json"
    )
    command = shlex.join(["python", "benchmarks/calibration.py", *(sys.argv[1:] if argv is None else argv)])
    if args.false_alarm:
        rates = false_alarm(args.false_alarm, args.problems)
        write_json(out, {"command": command, "seeds": args.false_alarm, "rates": rates})
        return rates
    prior, operator, noise, truths = make_problem(args.problem, args.problems)
    header = [f"{int(100 * a)}% central" for a in LEVELS] + [f"{int(100 * a)}% HPD" for a in LEVELS]
    print("| sampler | " + " | ".join(header) + " | SBC p | HPD p | TARP p | calibrated | time |")
    print("|---|" + "---|" * (len(header) + 5))
    rows = []
    for name in args.samplers:
        start = time.perf_counter()
        r = post.diagnostics.calibrate(
            SAMPLERS[name](args.steps),
            prior,
            operator,
            noise,
            n_problems=args.problems,
            num_samples=args.draws,
            levels=LEVELS,
            truths=truths,
            seed=args.seed,
        )
        row = {
            "sampler": name,
            "coverage": r.coverage,
            "hpd_coverage": r.hpd_coverage,
            "hpd_method": r.hpd_method,
            "sbc_pvalue": r.sbc_pvalue,
            "hpd_pvalue": r.hpd_pvalue,
            "tarp_pvalue": r.tarp_pvalue,
            "calibrated": r.calibrated,
            "nfe": r.result.nfe,
            "seconds": time.perf_counter() - start,
        }
        rows.append(row)
        cells = [f"{r.coverage[a]:.2f}" for a in LEVELS] + [f"{r.hpd_coverage[a]:.2f}" for a in LEVELS]
        print(
            f"| {name} | {' | '.join(cells)} | {r.sbc_pvalue:.2g} | {r.hpd_pvalue:.2g} | {r.tarp_pvalue:.2g} "
            f"| {'yes' if r.calibrated else 'no'} | {row['seconds']:.0f} s |",
            flush=True,
        )
    write_json(out, {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"JSON written to {out}")
    return rows


if __name__ == "__main__":
    main()
