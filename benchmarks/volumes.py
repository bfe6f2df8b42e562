"""3D volumes from the 2D phantoms prior: DiffusionMBIR against slice-by-slice reconstruction and FBP.

Volumes: ``phantom_volumes(n, 32, 32, seed=20_000)`` (32^3; the default ``tv_weight`` was chosen by hand on
a volume of seed 10 000), measured by parallel-beam CT slice by slice (``SliceWise(Radon)``, 12 angles,
noise 0.5). Methods: filtered back-projection per slice; slice by slice, DDS (50 steps) with the 2D
prior on each slice (``SliceStackPrior``); DiffusionMBIR (50 steps, total variation along z), and
DiffusionMBIR with ``tv_weight = 1e-9``: its warm-started ADMM coupling along z without the total
variation (an ablation). Per volume: PSNR of the posterior mean, SSIM averaged over the axial slices,
and the error of the slice differences ``mean |D_z x_hat - D_z x|`` (how consistent neighbouring slices
are, what a sagittal view shows); the table gives means and standard errors over the volumes and each
method's paired difference to slice by slice. ``--figure`` draws a sagittal and an axial slice of the first volume.
``--shepp-logan``: the 3D Shepp-Logan phantom (``shepp_logan_volume``) under ``--volumes`` noise draws
instead (each its own noise and sampler seed), so the standard errors are over noise realisations; its
figure cuts through the ventricles.

    python benchmarks/volumes.py --volumes 6 --out docs/results/volumes.json --figure docs/figures/volumes_sagittal.png
    python benchmarks/volumes.py --shepp-logan --volumes 4 --out docs/results/volumes-shepp-logan.json \
        --figure docs/figures/volumes_shepp_logan.png

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
from posterior.data import phantom_volumes, shepp_logan_volume
from posterior.metrics import standard_error
from posterior.priors import SliceStackPrior
from posterior.utils import write_json

METHODS = ("fbp", "slice-by-slice", "admm-coupling-only", "diffusion-mbir")


def grade(estimate: torch.Tensor, truth: torch.Tensor) -> dict:
    """``estimate``, ``truth``: (1, D, H, W)."""
    estimate, truth = estimate.double(), truth.double()
    dz = (estimate[:, 1:] - estimate[:, :-1]) - (truth[:, 1:] - truth[:, :-1])
    ssim = [post.metrics.ssim(estimate[:, j], truth[:, j]) for j in range(truth.shape[1])]
    return {
        "psnr": post.metrics.psnr(estimate, truth),
        "ssim": sum(ssim) / len(ssim),
        "z_error": float(dz.abs().mean()),
    }


def figure(truth: torch.Tensor, estimates: dict, path: Path, at: tuple[float, float] = (0.0, 0.0)) -> None:
    """A sagittal slice (through ``x = at[0]``) and an axial one (at ``z = at[1]``) of each volume."""
    from matplotlib.figure import Figure

    columns = {"truth": truth, **estimates}
    fig = Figure(figsize=(2.2 * len(columns), 4.6), layout="constrained")
    axes = fig.subplots(2, len(columns))

    def index(coordinate: float, count: int) -> int:  # of the slice whose centre is nearest
        return min(count - 1, max(0, round((coordinate + 1) * count / 2 - 0.5)))

    column, depth = index(at[0], truth.shape[-1]), index(at[1], truth.shape[1])
    for j, (name, volume) in enumerate(columns.items()):
        axes[0, j].imshow(volume[0, :, :, column].numpy(), cmap="gray", vmin=0, vmax=1)  # z down, y across
        axes[0, j].set_title(f"{name}: sagittal", fontsize=8)
        axes[1, j].imshow(volume[0, depth].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[1, j].set_title("axial", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument(
        "--shepp-logan", action="store_true", help="the 3D Shepp-Logan volume, per noise draw"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/volumes.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)  # graded by the metrics here
    shape = (1, args.depth, 32, 32)
    prior = SliceStackPrior(post.priors.pretrained("phantoms"), shape)
    radon = ops.Radon(torch.linspace(0.0, 180.0, 13)[:-1], 32)
    operator, noise = ops.SliceWise(radon, args.depth), ops.GaussianNoise(0.5)
    samplers = {
        "slice-by-slice": post.samplers.DDS(steps=args.steps),
        # one warm-started ADMM iteration without total variation: the quadratic coupling alone
        "admm-coupling-only": post.samplers.DiffusionMBIR(steps=args.steps, tv_weight=1e-9),
        "diffusion-mbir": post.samplers.DiffusionMBIR(steps=args.steps),
    }
    rows = []
    if args.shepp_logan:
        volumes = shepp_logan_volume(32, args.depth).expand(args.volumes, *shape)
    else:
        volumes = phantom_volumes(args.volumes, 32, args.depth, seed=20_000)
    for v, truth in enumerate(volumes):
        y = noise.sample(operator(truth[None]), torch.Generator().manual_seed(v))[0]
        problem = post.InverseProblem(operator, noise, y)
        fbp = radon.fbp(y.reshape(args.depth, *radon.out_shape)).reshape(shape)
        estimates = {"fbp": fbp}
        rows.append({"volume": v, "method": "fbp", **grade(fbp, truth)})
        for name, sampler in samplers.items():
            start = time.perf_counter()
            result = sampler.sample(problem, prior, args.draws, seed=v, progress=False)
            seconds = time.perf_counter() - start
            estimates[name] = result.mean()
            rows.append({"volume": v, "method": name, **grade(result.mean(), truth), "seconds": seconds})
        print(f"volume {v}: " + ", ".join(f"{r['method']} {r['psnr']:.2f} dB" for r in rows[-4:]), flush=True)
        if v == 0 and args.figure is not None:
            # the 3D Shepp-Logan's ventricles: through the left one (x = -0.22), at their level (z = -0.25)
            figure(truth, estimates, args.figure, (-0.22, -0.25) if args.shepp_logan else (0.0, 0.0))
    summary = []
    reference = [r for r in rows if r["method"] == "slice-by-slice"]
    for method in METHODS:
        mine = [r for r in rows if r["method"] == method]
        entry = {"method": method}
        for metric in ("psnr", "ssim", "z_error", "seconds"):
            if metric in mine[0]:
                values = torch.tensor([r[metric] for r in mine], dtype=torch.float64)
                entry[metric] = [float(values.mean()), standard_error(values)]
        for metric in ("psnr", "z_error"):
            gain = torch.tensor([m[metric] - r[metric] for m, r in zip(mine, reference, strict=True)])
            entry[f"{metric}_minus_slice"] = [float(gain.mean()), standard_error(gain)]
        summary.append(entry)
    command = shlex.join(["python", "benchmarks/volumes.py", *(sys.argv[1:] if argv is None else argv)])
    truth = "shepp_logan_volume" if args.shepp_logan else "phantom_volumes"
    write_json(args.out, {"command": command, "truth": truth, "rows": rows, "summary": summary})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
