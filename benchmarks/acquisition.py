"""Active acquisition of k-space columns against fixed sampling orders, on held-out phantoms.

Single-coil MRI of 32 x 32 images with the bundled ``phantoms`` prior: the held-out Shepp-Logan
phantom and the first held-out procedural phantoms (``phantoms(n, 32, seed=10_000)``, the prior's
held-out set). Every policy starts from the zero-frequency column and acquires one column at a time
up to ``W / 4`` columns (4x acceleration), passing ``W / 8`` (8x) on the way; AFDPS gives the posterior
after each acquisition. Per image, acceleration and policy: PSNR and SSIM of the posterior mean and
the coverage of the truth by the central 90% interval; the table gives means and standard errors over
the images, and the paired difference of ``max_entropy`` to each baseline.

    python benchmarks/acquisition.py --out docs/results/acquisition.json

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior import acquisition
from posterior.data import phantoms, shepp_logan
from posterior.utils import write_json

POLICIES = ("max_entropy", "random", "equispaced", "variable_density")


def images(count: int) -> list[tuple[str, torch.Tensor]]:
    """The held-out Shepp-Logan phantom and ``count - 1`` held-out procedural phantoms, (1, 32, 32)."""
    out = [("shepp-logan", shepp_logan(32).reshape(1, 32, 32))]
    held_out = phantoms(max(count - 1, 1), 32, seed=10_000)
    out += [(f"phantom {i}", held_out[i].reshape(1, 32, 32)) for i in range(count - 1)]
    return out


def run(policy: str, truth: torch.Tensor, prior, sampler, particles: int, sigma: float, seed: int) -> dict:
    family = acquisition.MeasurementFamily.mri_columns((32, 32))
    noise = ops.GaussianNoise(sigma)
    full = noise.sample(family.full(truth[None].to(prior.dtype)), torch.Generator().manual_seed(seed))[0]
    start = time.perf_counter()
    result = acquisition.acquire(
        family,
        prior,
        sampler,
        7,
        lambda k: full,
        noise,
        policy=policy,
        initial=[0],
        num_samples=particles,
        seed=seed,
        progress=False,
    )
    row = {"policy": policy, "order": result.order, "seconds": time.perf_counter() - start}
    for acceleration, columns in ((8, 4), (4, 8)):
        posterior = result.posteriors[columns - 1]
        lower, upper = posterior.interval(0.9)
        mean, target = posterior.mean().double(), truth.double()
        row[f"{acceleration}x"] = {
            "psnr": post.metrics.psnr(mean, target),
            "ssim": post.metrics.ssim(mean, target),
            "coverage": float(((lower <= truth) & (truth <= upper)).double().mean()),
        }
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="AFDPS noise levels")
    parser.add_argument("--particles", type=int, default=32, help="per run (2 runs)")
    parser.add_argument("--sigma", type=float, default=0.02, help="k-space noise")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/acquisition.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)  # small budgets; graded by the metrics
    prior = post.priors.pretrained("phantoms")
    sampler = post.samplers.AFDPS(steps=args.steps)
    rows = []
    for i, (name, truth) in enumerate(images(args.images)):
        for policy in POLICIES:
            row = run(policy, truth, prior, sampler, args.particles, args.sigma, seed=i)
            rows.append({"image": name, **row})
            print(
                f"{name} {policy}: 8x PSNR {row['8x']['psnr']:.2f}, 4x PSNR {row['4x']['psnr']:.2f} "
                f"(columns {row['order']}, {row['seconds']:.0f} s)",
                flush=True,
            )
    summary = []
    for acceleration in ("8x", "4x"):
        for policy in POLICIES:
            mine = [r for r in rows if r["policy"] == policy]
            best = [r for r in rows if r["policy"] == "max_entropy"]
            entry = {"acceleration": acceleration, "policy": policy}
            for metric in ("psnr", "ssim", "coverage"):
                values = torch.tensor([r[acceleration][metric] for r in mine], dtype=torch.float64)
                gain = torch.tensor(
                    [
                        b[acceleration][metric] - r[acceleration][metric]
                        for b, r in zip(best, mine, strict=True)
                    ],
                    dtype=torch.float64,
                )
                se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else math.nan
                gain_se = float(gain.std() / math.sqrt(len(gain))) if len(gain) > 1 else math.nan
                entry[metric] = [float(values.mean()), se]
                entry[f"{metric}_max_entropy_minus"] = [float(gain.mean()), gain_se]
            summary.append(entry)
    command = shlex.join(["python", "benchmarks/acquisition.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "rows": rows, "summary": summary})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
