"""Convergence diagnostics of Denoising Langevin Gibbs chains on the digits prior (box inpainting).

Four chains (``--chains``) on one held-out digit with its upper half hidden, the bundled noise-level
classifier for the sigma-conditional; :func:`posterior.diagnostics.convergence` gives ArviZ's
rank-normalised split R-hat and bulk/tail ESS per pixel (through ``PosteriorSamples.to_arviz()``). Reported: the largest R-hat, the
fraction of pixels above 1.01, the smallest bulk and tail ESS, NFE and time.

    python benchmarks/mcmc_digits.py --draws 100 --burn-in 200

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
from posterior.data import digits
from posterior.priors import pretrained
from posterior.utils import write_json


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--burn-in", type=int, default=200)
    parser.add_argument("--thin", type=int, default=2)
    parser.add_argument("--index", type=int, default=11, help="held-out digit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mcmc_digits.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    prior = pretrained("digits")
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    noise = ops.GaussianNoise(0.05)
    y = noise.sample(operator(digits("test")[args.index : args.index + 1]), torch.Generator().manual_seed(0))[
        0
    ]
    sampler = post.samplers.DenoisingLangevinGibbs(
        classifier="digits", burn_in=args.burn_in, thin=args.thin
    )
    result = sampler.sample(
        post.InverseProblem(operator, noise, y), prior, args.draws, chains=args.chains, seed=0, progress=True
    )
    report = post.diagnostics.convergence(result, warn=False)  # ArviZ's R-hat and ESS per pixel
    print(report)
    hidden = (slice(None), slice(0, 8))  # (channel, rows): the inpainted half
    row = {
        "chains": args.chains,
        "draws": args.draws,
        "burn_in": args.burn_in,
        "thin": args.thin,
        "nfe": result.nfe,
        "wall_time": result.wall_time,
        "max_rhat": report.rhat_max,
        "max_rhat_hidden": float(report.rhat[hidden].max()),
        "fraction_rhat_above_1.01": report.fraction_rhat_above,
        "min_ess_bulk": report.ess_bulk_min,
        "min_ess_tail": report.ess_tail_min,
        "median_ess_bulk_hidden": float(report.ess_bulk[hidden].median()),
    }
    for key, value in row.items():
        print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")
    command = shlex.join(["python", "benchmarks/mcmc_digits.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "rows": [row]})
    print(f"JSON written to {args.out}")
    return row


if __name__ == "__main__":
    main()
