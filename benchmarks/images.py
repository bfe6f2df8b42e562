"""Image restoration with the bundled digits prior: PSNR of the posterior mean at equal NFE.

Tasks on held-out digits (16x16, values in [0, 1], Gaussian noise ``sigma_y``): box inpainting
(the central 8x8 block missing), 2x super-resolution (average pooling) and Gaussian deblurring
(std 1 pixel, circular). Every image gets its own measurement; all images and draws run as one
batch (a batched ``y``, one measurement per chain: chain ``i`` is image ``i``; for the SMC samplers one
run of ``--draws`` particles per image). Reported per sampler: PSNR of the (weighted) mean of the
draws per image against the ground truth (mean over images), the mean per-pixel posterior std, NFE,
VJPs, time.

    python benchmarks/images.py dps reddiff --steps 100 500 --images 32 --draws 4

Prints a table and writes JSON (with the command line). Never asserts.
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
from posterior.data import digits
from posterior.utils import write_json

SHAPE = (1, 16, 16)
TASKS = {
    "inpainting": lambda: ops.Inpainting.box(SHAPE, 4, 4, 8, 8),
    "super-resolution": lambda: ops.Downsample(SHAPE, 2),
    "deblurring": lambda: ops.Blur.gaussian(SHAPE, std=1.0),
}
SAMPLERS = {  # name -> (steps, one-image problem) -> sampler
    "dps": lambda steps, problem: post.samplers.DPS(steps=steps),
    "reddiff": lambda steps, problem: post.samplers.RedDiff(steps=steps, sigma_min=0.05),
    "reddiff-pinv-init": lambda steps, problem: post.samplers.RedDiff(
        steps=steps, sigma_min=0.05, init="pinv"
    ),
    "reddiff-paper": lambda steps, problem: post.samplers.RedDiff.paper(problem, steps=steps),
    "afdps": lambda steps, problem: post.samplers.AFDPS(steps=steps),
    "mcgdiff": lambda steps, problem: post.samplers.MCGdiff(steps=steps),
}


def run_task(
    task: str, sampler_name: str, steps: int, images: torch.Tensor, draws: int, sigma_y: float, prior
):
    operator = TASKS[task]()
    noise = ops.GaussianNoise(sigma_y)
    n = images.shape[0]
    y = noise.sample(operator(images), torch.Generator().manual_seed(1))
    problem = post.InverseProblem(operator, noise, y)  # one measurement per chain: chain i is image i
    sampler = SAMPLERS[sampler_name](steps, post.InverseProblem(operator, noise, y[0]))
    result = sampler.sample(problem, prior, draws, chains=n, seed=0, progress=False)
    per_image = result.samples
    if result.log_weights is None:
        mean, std = per_image.mean(1), per_image.std(1)
    else:  # SMC: one run per image, weighted particles
        w = torch.softmax(result.log_weights, dim=1).to(per_image.dtype)
        mean = torch.einsum("nd,nd...->n...", w, per_image)
        std = torch.einsum("nd,nd...->n...", w, (per_image - mean[:, None]) ** 2).sqrt()
    psnr = sum(metrics.psnr(mean[i].clamp(0, 1), images[i]) for i in range(n)) / n
    return {
        "task": task,
        "sampler": sampler_name,
        "steps": steps,
        "draws": draws,
        "nfe": result.nfe,
        "grad_evals": result.grad_evals,
        "psnr_mean": psnr,
        "psnr_measurement_pinv": sum(
            metrics.psnr(operator.pinv(y[i : i + 1])[0].clamp(0, 1), images[i]) for i in range(n)
        )
        / n,
        "posterior_std": float(std.mean()) if draws > 1 else float("nan"),
        "wall_time": result.wall_time,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="+", choices=sorted(SAMPLERS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--sigma-y", type=float, default=0.05)
    parser.add_argument("--prior", default="digits", help="bundled prior name or a weight file")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/images.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    prior = post.priors.pretrained(args.prior)
    images = digits("test")[: args.images]
    header = f"{'task':<17} {'sampler':<14} {'steps':>5} {'NFE':>5} {'VJP':>5} {'PSNR':>6} {'A+y PSNR':>8} {'std':>6} {'time s':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for task in args.tasks:
        for name in args.samplers:
            for steps in args.steps:
                r = run_task(task, name, steps, images, args.draws, args.sigma_y, prior)
                rows.append(r)
                print(
                    f"{task:<17} {name:<14} {steps:>5} {r['nfe']:>5} {r['grad_evals']:>5} {r['psnr_mean']:>6.2f} "
                    f"{r['psnr_measurement_pinv']:>8.2f} {r['posterior_std']:>6.3f} {r['wall_time']:>7.1f}",
                    flush=True,
                )
    command = shlex.join(["python", "benchmarks/images.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(
        args.out, {"command": command, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    )
    print(f"\nJSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
