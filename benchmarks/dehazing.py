"""Ultrasound dehazing with two diffusion priors, against two baselines, on held-out simulated frames.

Frames: ``posterior.data.ultrasound_frames(--frames, lines=256, samples=512, seed=10_000)`` (the
priors' sampling; other sizes only for quick checks),
companded RF, the hazy frame ``y = C(C^-1(x) + C^-1(h))``. Methods, all on the full frame:

- ``hazy``: the measurement itself;
- ``svd``: a classical low-rank clutter filter: the linear RF frame (samples x lines) minus its
  leading singular components (haze is nearly coherent across lines), as many as give the best PSNR
  on a validation frame;
- ``dps``: one prior (``us-tissue``), haze treated as Gaussian noise of the haze's measured standard
  deviation in the companded domain, DPS guidance on the joint sampler's schedule;
- ``joint``: :class:`posterior.samplers.JointPosterior` with the ``us-tissue`` and ``us-haze`` priors
  (PiGDM guidance, late start), each as :func:`posterior.priors.ultrasound_prior` (32x32 patches with
  8 pixels of overlap on the frame band-limited to a quarter of its lines, lifted back to all lines).
  Draws are clipped to [-1, 1], the range the link sees.

Metrics on the posterior mean (``--draws`` per frame), against the haze-free frame: gCNR and contrast
between the cyst and its surrounding tissue and between blood pool and myocardium (on the envelope),
PSNR and SSIM of the B-mode image (60 dB mapped to [0, 1]) and of the companded RF, and the KS
statistic between the log-envelopes of the estimate and of the clean frame in the myocardium
(speckle preservation: 0 is identical); the joint sampler's paired differences to each other method
(mean and standard error over frames). Writes ``docs/figures/dehazing.png`` (hazy, dehazed mean,
haze estimate, per-pixel std, ground truth, baselines as B-mode sector images).

    python benchmarks/dehazing.py --threads 2   # 20 frames, 2 draws, 60 steps: about 30 min

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import operators as ops
import posterior as post
from operators.ultrasound import compand, expand
from posterior import metrics
from posterior.data import bmode, contrast_db, envelope, gcnr, ks_statistic, scan_convert, ultrasound_frames
from posterior.priors import StackedPrior, ultrasound_prior
from posterior.utils import write_json

DYNAMIC_RANGE = 60.0


def svd_filter(hazy: torch.Tensor, rank: int) -> torch.Tensor:
    """Remove the ``rank`` leading singular components of each linear RF frame ``(n, 1, S, L)``."""
    rf = expand(hazy.double())
    U, s, Vh = torch.linalg.svd(rf[:, 0], full_matrices=False)
    s[:, :rank] = 0
    return compand((U * s[:, None, :]) @ Vh)[:, None].to(hazy.dtype)


def dehaze_joint(y, tissue, haze, args, seed):
    shape = tuple(y.shape)
    prior = StackedPrior([ultrasound_prior(p, shape[1:]) for p in (tissue, haze)])
    problem = post.InverseProblem(ops.HazeLink(shape), ops.GaussianNoise(args.sigma_y), y)
    sampler = post.samplers.JointPosterior(
        steps=args.steps, guidance="pigdm", sigma_start=args.sigma_start, step_size=(1.0, 1.0)
    )
    result = sampler.sample(problem, prior, args.draws, seed=seed, progress=args.progress)
    tissue_draws, haze_draws = prior.split(result.samples[0].clamp(-1.0, 1.0))  # the range the link sees
    return tissue_draws, haze_draws, result


def dehaze_dps(y, tissue, haze_std, args, seed):
    """One prior, haze as Gaussian noise: DPS guidance (a VJP through Tweedie's estimate) with the joint
    sampler's schedule and late start, step size 0.1 (1 diverges: the noise is far from Gaussian)."""
    prior = ultrasound_prior(tissue, tuple(y.shape[1:]))
    problem = post.InverseProblem(ops.Identity(tuple(y.shape)), ops.GaussianNoise(haze_std), y)
    sampler = post.samplers.JointPosterior(
        steps=args.steps, guidance="dps", sigma_start=args.sigma_start, step_size=0.1
    )
    result = sampler.sample(problem, prior, args.draws, seed=seed, progress=args.progress)
    return result.samples[0].clamp(-1.0, 1.0), result


def best_svd_rank(lines: int, samples: int, max_rank: int = 8) -> int:
    """The rank of :func:`svd_filter` with the best RF PSNR on a validation frame (seed 20000)."""
    frame = ultrasound_frames(1, lines=lines, samples=samples, seed=20_000)
    psnrs = [metrics.psnr(svd_filter(frame["hazy"], r), frame["tissue"], 2.0) for r in range(1, max_rank + 1)]
    return 1 + int(np.argmax(psnrs))


def scores(estimate: torch.Tensor, frame: dict, k: int) -> dict:
    """Metrics of one companded RF estimate ``(1, S, L)`` of frame ``k``."""
    clean = frame["tissue"][k]
    env, env_clean = envelope(expand(estimate.double())), envelope(expand(clean.double()))
    ref = env_clean.flatten(-2).quantile(0.999)
    b, b_clean = (
        bmode(expand(v.double()), DYNAMIC_RANGE, ref) / DYNAMIC_RANGE + 1 for v in (estimate, clean)
    )
    cyst, ring = frame["cyst_mask"][k], frame["background_mask"][k]
    blood, wall = frame["blood_mask"][k], frame["wall_mask"][k]
    return {
        "gcnr_cyst": gcnr(b, cyst, ring),
        "gcnr_ventricle": gcnr(b, blood, wall),
        "contrast_cyst_db": contrast_db(env, cyst, ring),
        "contrast_ventricle_db": contrast_db(env, blood, wall),
        "psnr_bmode": metrics.psnr(b, b_clean),
        "ssim_bmode": metrics.ssim(b, b_clean),
        "psnr_rf": metrics.psnr(estimate, clean, data_range=2.0),
        "ks_wall": ks_statistic(torch.log(env + 1e-12), torch.log(env_clean + 1e-12), wall),
    }


def figure(path: Path, frame: dict, estimates: dict, haze_mean, tissue_std) -> None:
    from matplotlib.figure import Figure

    clean = frame["tissue"][0]
    ref = envelope(expand(clean.double())).flatten(-2).quantile(0.999)
    panels = [("hazy", frame["hazy"][0]), ("ground truth", clean)]
    panels += [(name, est) for name, est in estimates.items() if name != "hazy"]
    fig = Figure(figsize=(3.2 * (len(panels) + 2), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels) + 2)
    for ax, (name, rf) in zip(axes, panels, strict=False):
        image = scan_convert(bmode(expand(rf.double()), DYNAMIC_RANGE, ref)[0])
        ax.imshow(image.numpy(), cmap="gray", vmin=-DYNAMIC_RANGE, vmax=0)
        ax.set_title(name, fontsize=9)
    haze_image = scan_convert(bmode(expand(haze_mean.double()), DYNAMIC_RANGE, ref)[0])
    axes[-2].imshow(haze_image.numpy(), cmap="gray", vmin=-DYNAMIC_RANGE, vmax=0)
    axes[-2].set_title("joint: haze estimate", fontsize=9)
    shown = axes[-1].imshow(scan_convert(tissue_std[0].float()).numpy(), cmap="magma")
    axes[-1].set_title("joint: per-pixel std (RF)", fontsize=9)
    fig.colorbar(shown, ax=axes[-1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--lines", type=int, default=256, help="the priors were trained on 256-line frames")
    parser.add_argument("--samples", type=int, default=512, help="depth samples (the priors': 512)")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sigma-start", type=float, default=3.0)
    parser.add_argument("--sigma-y", type=float, default=0.02)
    parser.add_argument("--weights", type=Path, default=None, help="folder of us-tissue/us-haze weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/dehazing.png"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dehazing.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tissue, haze = (
        name if args.weights is None else args.weights / f"{name}.safetensors"
        for name in ("us-tissue", "us-haze")
    )
    frame = ultrasound_frames(args.frames, lines=args.lines, samples=args.samples, seed=10_000)
    haze_std = float((frame["hazy"] - frame["tissue"]).std())
    rank = best_svd_rank(args.lines, args.samples)
    rows, times = {}, {}
    for k in range(args.frames):
        y = frame["hazy"][k]
        start = time.perf_counter()
        tissue_draws, haze_draws, joint = dehaze_joint(y, tissue, haze, args, seed=k)
        times.setdefault("joint", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        dps_draws, _ = dehaze_dps(y, tissue, haze_std, args, seed=k)
        times.setdefault("dps", []).append(time.perf_counter() - start)
        estimates = {
            "hazy": y,
            "svd": svd_filter(y[None], rank)[0],
            "dps": dps_draws.mean(0),
            "joint": tissue_draws.mean(0),
        }
        for name, est in estimates.items():
            rows.setdefault(name, []).append(scores(est, frame, k))
        if k == 0:
            figure(
                args.figure,
                frame,
                estimates,
                haze_draws.mean(0),
                tissue_draws.std(0) if args.draws > 1 else torch.zeros_like(y),
            )
    clean = [scores(frame["tissue"][k], frame, k) for k in range(args.frames)]
    table = []
    keys = list(clean[0])
    print(f"| method | {' | '.join(keys)} | s per frame |\n|---|" + "---|" * (len(keys) + 1))
    for name, per_frame in [("clean", clean), *rows.items()]:
        mean = {key: float(np.mean([r[key] for r in per_frame])) for key in keys}
        seconds = float(np.mean(times[name])) if name in times else 0.0
        table.append({"method": name, **mean, "seconds_per_frame": seconds})
        print(
            f"| {name} | " + " | ".join(f"{mean[key]:.3f}" for key in keys) + f" | {seconds:.0f} |",
            flush=True,
        )
    paired = {}
    for baseline in ("hazy", "svd", "dps"):
        for key in ("gcnr_cyst", "gcnr_ventricle", "psnr_bmode", "psnr_rf"):
            diff = np.array([j[key] - b[key] for j, b in zip(rows["joint"], rows[baseline], strict=True)])
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
            paired[f"joint-{baseline}:{key}"] = {"mean": float(diff.mean()), "se": se}
            error = f" +- {se:.3f}" if se is not None else ""
            print(f"joint - {baseline}, {key}: {diff.mean():+.3f}{error} (paired, {len(diff)} frames)")
    command = shlex.join(["python", "benchmarks/dehazing.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(
        args.out,
        {
            "command": command,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": table,
            "per_frame": rows,
            "paired_differences": paired,
            "haze_std": haze_std,
            "svd_rank": rank,
        },
    )
    print(f"SVD rank {rank}; haze std {haze_std:.3f}; JSON written to {args.out}; figure {args.figure}")
    return table


if __name__ == "__main__":
    main()
