"""Active acquisition against fixed sampling orders, on held-out images.

Two tasks. ``mri``: single-coil MRI of 32 x 32 images with the bundled ``phantoms`` prior, the held-out
Shepp-Logan phantom and the first held-out procedural phantoms (``phantoms(n, 32, seed=10_000)``, the
prior's held-out set); every policy starts from the zero-frequency column and acquires one k-space column
at a time up to ``W / 4`` columns (4x acceleration), passing ``W / 8`` (8x). ``digits``: pixels of
16 x 16 held-out digits (``digits("test")``) with the bundled ``digits`` prior; every policy starts from
four pixels on a coarse grid and acquires four pixels per step (each step greedy given its earlier
picks) up to 64 pixels (4x), passing 32 (8x). AFDPS gives the posterior after each step. Per image,
acceleration and policy: PSNR and SSIM of the posterior mean and the coverage of the truth by the
central 90% interval; the table gives means and standard errors over the images, and the paired
difference of ``max_entropy`` to each baseline. ``--figure`` draws each policy's acquired mask and
posterior mean for the first image.

    python benchmarks/acquisition.py --task mri --images 4 --out docs/results/acquisition.json
    python benchmarks/acquisition.py --task digits --images 6 --out docs/results/acquisition_digits.json \
        --figure docs/figures/acquisition_digits.png

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior import acquisition
from posterior.data import digits, held_out_phantoms
from posterior.metrics import standard_error
from posterior.utils import write_json


@dataclass
class Task:
    prior: str
    family: acquisition.MeasurementFamily
    sigma: float  # measurement noise
    initial: list[int]
    per_step: int
    checkpoints: dict[str, int]  # acceleration -> candidates acquired
    policies: tuple[str, ...]


def mri_task() -> Task:
    return Task(
        "phantoms",
        acquisition.MeasurementFamily.mri_columns((32, 32)),
        0.02,
        [0],
        1,
        {"8x": 4, "4x": 8},
        ("max_entropy", "random", "equispaced", "variable_density"),
    )


def digits_task() -> Task:
    corners = [16 * r + c for r in (4, 11) for c in (4, 11)]  # a coarse 2 x 2 grid of pixels
    return Task(
        "digits",
        acquisition.MeasurementFamily.pixels((1, 16, 16)),
        0.05,
        corners,
        4,
        {"8x": 32, "4x": 64},
        ("max_entropy", "random", "equispaced"),
    )


def images(task: str, count: int) -> list[tuple[str, torch.Tensor]]:
    """Held-out images, each ``(1, H, W)``: Shepp-Logan and procedural phantoms, or test digits."""
    if task == "digits":
        return [(f"digit {i}", image) for i, image in enumerate(digits("test")[:count])]
    names = ["shepp-logan"] + [f"phantom {i}" for i in range(count - 1)]
    return list(zip(names, held_out_phantoms(count), strict=True))


def run(task: Task, policy: str, truth: torch.Tensor, prior, sampler, particles: int, seed: int):
    """One acquisition run; its row of metrics and the :class:`acquisition.Acquisition`."""
    family = task.family
    noise = ops.GaussianNoise(task.sigma)
    full = noise.sample(family.full(truth[None].to(prior.dtype)), torch.Generator().manual_seed(seed))[0]
    start = time.perf_counter()
    result = acquisition.acquire(
        family,
        prior,
        sampler,
        max(task.checkpoints.values()) - len(task.initial),
        lambda k: full,
        noise,
        policy=policy,
        initial=task.initial,
        per_step=task.per_step,
        num_samples=particles,
        seed=seed,
        progress=False,
    )
    row = {
        "policy": policy,
        "order": result.order,
        "updates": [step.update for step in result.steps],
        "seconds": time.perf_counter() - start,
    }
    for acceleration, count in task.checkpoints.items():
        posterior = result.posterior(count)
        lower, upper = posterior.interval(0.9)
        mean, target = posterior.mean().double(), truth.double()
        row[acceleration] = {
            "psnr": post.metrics.psnr(mean, target),
            "ssim": post.metrics.ssim(mean, target),
            "coverage": float(((lower <= truth) & (truth <= upper)).double().mean()),
        }
    return row, result


def figure(task: Task, truth: torch.Tensor, results: dict, path: Path) -> None:
    """Per policy: the mask acquired at the last checkpoint (pixels; k-space columns, zero frequency
    centred) and the posterior mean given it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.0 * (len(results) + 1), 4.0), layout="constrained")
    axes = fig.subplots(2, len(results) + 1)
    axes[0, 0].imshow(truth[0].numpy(), cmap="gray")
    axes[0, 0].set_title("truth", fontsize=9)
    axes[1, 0].axis("off")
    count = max(task.checkpoints.values())
    for j, (policy, result) in enumerate(results.items(), start=1):
        mask = result.mask(task.family, count)
        if task.family.period is not None:  # k-space (coils, H, W, re/im): zero frequency in the middle
            mask = torch.fft.fftshift(mask.any(-1).any(0).double(), dim=1)
        else:
            mask = mask.reshape(truth.shape)[0]
        axes[0, j].imshow(mask.double().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"{policy}: {count} acquired", fontsize=8)
        axes[1, j].imshow(result.posterior(count).mean()[0].numpy(), cmap="gray")
        axes[1, j].set_title("posterior mean", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("mri", "digits"), default="mri")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="AFDPS noise levels")
    parser.add_argument("--particles", type=int, default=32, help="per run (2 runs)")
    parser.add_argument("--figure", type=Path, default=None, help="masks and means for the first image")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/acquisition.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)  # small budgets; graded by the metrics
    task = mri_task() if args.task == "mri" else digits_task()
    prior = post.priors.pretrained(task.prior)
    sampler = post.samplers.AFDPS(steps=args.steps)
    rows = []
    for i, (name, truth) in enumerate(images(args.task, args.images)):
        results = {}
        for policy in task.policies:
            row, results[policy] = run(task, policy, truth, prior, sampler, args.particles, seed=i)
            rows.append({"image": name, **row})
            print(
                f"{name} {policy}: "
                + ", ".join(f"{a} PSNR {row[a]['psnr']:.2f}" for a in task.checkpoints)
                + f" ({row['seconds']:.0f} s)",
                flush=True,
            )
        if i == 0 and args.figure is not None:
            figure(task, truth, results, args.figure)
    summary = []
    best = [r for r in rows if r["policy"] == "max_entropy"]
    for acceleration in task.checkpoints:
        for policy in task.policies:
            mine = [r for r in rows if r["policy"] == policy]
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
                entry[metric] = [float(values.mean()), standard_error(values)]
                entry[f"{metric}_max_entropy_minus"] = [float(gain.mean()), standard_error(gain)]
            summary.append(entry)
    command = shlex.join(["python", "benchmarks/acquisition.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "task": args.task, "rows": rows, "summary": summary})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
