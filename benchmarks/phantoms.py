"""Sparse-view CT and accelerated MRI of held-out phantoms: DDS against DPS, MCGdiff, AFDPS and the
classical reconstructions, on the bundled ``phantoms`` prior.

Images: the held-out Shepp-Logan phantom and the first held-out procedural phantoms
(``phantoms(n, 32, seed=10_000)``), 32 x 32. Tasks: parallel-beam CT with 12 and 24 angles over 180
degrees (at 32 pixels about 50 angles sample fully), noise 0.5 on the sinogram, against filtered
back-projection; single-coil Cartesian MRI at 4x and 8x acceleration (``MRI.cartesian_mask``, seed 0),
noise 0.02, against the zero-filled inverse FFT. Per image, task and sampler: PSNR and SSIM of the
posterior mean, coverage of the truth by the central 90% interval of the draws (8 for DDS and DPS, 2
runs of 16 particles for the SMC samplers), NFE and VJPs per draw, and seconds per image; the table
gives means and standard errors over the images, and for each sampler its PSNR minus DPS's (paired)
and its time over DPS's, both measured in this run.

    python benchmarks/phantoms.py --images 4 --out docs/results/phantoms.json

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior.data import held_out_phantoms
from posterior.metrics import standard_error
from posterior.utils import write_json

ANGLES = {"ct-12": 12, "ct-24": 24}
ACCELERATION = {"mri-4x": 4, "mri-8x": 8}
SAMPLERS = {  # name -> sampler; the SMC samplers run 2 runs of --particles particles per image
    "dds-50": lambda: post.samplers.DDS(steps=50),
    "dds-100": lambda: post.samplers.DDS(steps=100),
    "dds-200": lambda: post.samplers.DDS(steps=200),
    "dds-50-ddim": lambda: post.samplers.DDS(steps=50, eta=0.0),
    "dps-1000": lambda: post.samplers.DPS(steps=1000),
    "mcgdiff-100": lambda: post.samplers.MCGdiff(steps=100),
    "afdps-100": lambda: post.samplers.AFDPS(steps=100),
}
SMC = ("mcgdiff", "afdps")


def task(name: str):
    """The operator, the noise and the classical reconstruction of a task."""
    if name in ANGLES:
        radon = ops.Radon(torch.linspace(0.0, 180.0, ANGLES[name] + 1)[:-1], 32)
        return radon, ops.GaussianNoise(0.5), lambda y: radon.fbp(y)
    mri = ops.MRI(ops.MRI.cartesian_mask((32, 32), acceleration=ACCELERATION[name], seed=0))
    return mri, ops.GaussianNoise(0.02), lambda y: mri.adjoint(y)


def images(count: int) -> list[tuple[str, torch.Tensor]]:
    """The held-out test images of the phantoms prior, named, each (1, 32, 32)."""
    names = ["shepp-logan"] + [f"phantom {i}" for i in range(count - 1)]
    return list(zip(names, held_out_phantoms(count), strict=True))


def grade(estimate: torch.Tensor, truth: torch.Tensor) -> dict:
    return {
        "psnr": post.metrics.psnr(estimate.double(), truth.double()),
        "ssim": post.metrics.ssim(estimate.double(), truth.double()),
    }


def run(sampler_name: str, problem, prior, truth, draws: int, particles: int, seed: int) -> dict:
    sampler = SAMPLERS[sampler_name]()
    smc = sampler_name.startswith(SMC)
    start = time.perf_counter()
    result = sampler.sample(
        problem, prior, particles if smc else draws, chains=2 if smc else 1, seed=seed, progress=False
    )
    seconds = time.perf_counter() - start
    lower, upper = result.interval(0.9)
    return {
        **grade(result.mean(), truth),
        "coverage": float(((lower <= truth) & (truth <= upper)).double().mean()),
        "nfe": result.nfe,
        "vjp": result.grad_evals,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="*", help=f"any of {', '.join(SAMPLERS)} (default: all)")
    parser.add_argument(
        "--tasks", nargs="+", default=[*ANGLES, *ACCELERATION], choices=[*ANGLES, *ACCELERATION]
    )
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--draws", type=int, default=8, help="per image (DDS, DPS)")
    parser.add_argument("--particles", type=int, default=16, help="per run, 2 runs per image (SMC)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/phantoms.json"))
    args = parser.parse_args(argv)
    args.samplers = args.samplers or list(SAMPLERS)
    if unknown := [name for name in args.samplers if name not in SAMPLERS]:
        parser.error(f"unknown samplers {unknown}; choose from {list(SAMPLERS)}")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)  # graded by the metrics here
    prior = post.priors.pretrained("phantoms")
    rows = []
    for task_name in args.tasks:
        operator, noise, classical = task(task_name)
        for i, (image, truth) in enumerate(images(args.images)):
            y = noise.sample(operator(truth[None]), torch.Generator().manual_seed(i))[0]
            problem = post.InverseProblem(operator, noise, y)
            rows.append(
                {
                    "task": task_name,
                    "image": image,
                    "sampler": "classical",
                    **grade(classical(y[None])[0], truth),
                }
            )
            for name in args.samplers:
                row = {
                    "task": task_name,
                    "image": image,
                    "sampler": name,
                    **run(name, problem, prior, truth, args.draws, args.particles, i),
                }
                rows.append(row)
                print(
                    f"{task_name} {image} {name}: PSNR {row['psnr']:.2f}, {row['seconds']:.1f} s", flush=True
                )
    summary = []
    for task_name in args.tasks:
        reference = [r for r in rows if r["task"] == task_name and r["sampler"] == "dps-1000"]
        for name in ["classical", *args.samplers]:
            mine = [r for r in rows if r["task"] == task_name and r["sampler"] == name]
            entry = {"task": task_name, "sampler": name}
            for metric in ("psnr", "ssim", "coverage", "seconds", "nfe", "vjp"):
                if metric in mine[0]:
                    values = torch.tensor([float(r[metric]) for r in mine], dtype=torch.float64)
                    entry[metric] = [float(values.mean()), standard_error(values)]
            if reference and name != "dps-1000":
                gain = torch.tensor([m["psnr"] - r["psnr"] for m, r in zip(mine, reference, strict=True)])
                entry["psnr_minus_dps"] = [float(gain.mean()), standard_error(gain.double())]
                if "seconds" in mine[0]:
                    entry["time_over_dps"] = sum(m["seconds"] for m in mine) / sum(
                        r["seconds"] for r in reference
                    )
            summary.append(entry)
    command = shlex.join(["python", "benchmarks/phantoms.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "rows": rows, "summary": summary})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
