"""Quality evidence for the bundled priors.

For each prior: a grid of unconditional samples (PNG), the distance from samples to their nearest
training image against the same for noise images and for held-out images, the sliced Wasserstein
distance between samples and held-out images in pixel space against the held-out-vs-training floor,
the denoising MSE across sigma on held-out images against the MMSE of a Gaussian prior fitted to the
training data, and the noise-level classifier's held-out accuracy.

    python benchmarks/priors.py [digits phantoms us-tissue us-haze] [--num-samples 256] [--steps 40] [--docs docs/figures]

Prints a table and writes JSON (with the command line) and PNGs. Never asserts.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from posterior import metrics
from posterior.priors import Gaussian, noise_classifier, pretrained  # noqa: E402
from posterior.priors.training import GAUSSIAN_FIT_SIZE, RECIPES, classifier_accuracy  # noqa: E402
from posterior.utils import atomic_write, write_json  # noqa: E402

SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def fitted_gaussian(train: torch.Tensor) -> Gaussian:
    """The Gaussian prior with the training data's mean and covariance (float64; ridge 1e-6)."""
    flat = train.reshape(train.shape[0], -1).to(torch.float64)
    cov = torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=torch.float64)
    return Gaussian(flat.mean(0).reshape(train.shape[1:]), cov)


def denoising_mse(denoise, x0: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """Mean squared error per pixel of ``denoise(x0 + sigma eps, sigma)`` over held-out images ``x0``.

    ``eps`` is drawn in float32 whatever the dtype of ``x0``, so that a float64 denoiser sees the same
    noisy images as a float32 one (a paired comparison; unpaired, the MSE at sigma = 3 moves by 3%)."""
    g = torch.Generator().manual_seed(seed)
    noisy = x0 + sigma * torch.randn(x0.shape, generator=g).to(x0.dtype)
    with torch.no_grad():
        return float((denoise(noisy, sigma) - x0).pow(2).mean())


def nearest_distance(x: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over ``x`` of the Euclidean distance to the nearest image of ``reference``."""
    d = torch.cdist(x.reshape(x.shape[0], -1).double(), reference.reshape(reference.shape[0], -1).double())
    return float(d.min(1).values.mean())


def save_grid(
    images: torch.Tensor, path: Path, title: str, value_range: tuple[float, float] = (0.0, 1.0)
) -> None:
    n = min(64, images.shape[0])
    cols = 8
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows + 0.4))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(
                images[i, 0].clamp(*value_range).numpy(),
                cmap="gray",
                vmin=value_range[0],
                vmax=value_range[1],
            )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def evaluate(name: str, num_samples: int, steps: int, figures: Path) -> dict:
    recipe = RECIPES[name]
    start = time.perf_counter()
    prior = pretrained(name)
    load_time = time.perf_counter() - start
    held_out = recipe.held_out()
    train = recipe.batch(
        GAUSSIAN_FIT_SIZE, torch.Generator().manual_seed(5)
    )  # as many as the network's Gaussian
    start = time.perf_counter()
    samples = prior.sample(num_samples, steps=steps, seed=0)
    sample_time = time.perf_counter() - start
    low, high = float(held_out.min()), float(held_out.max())  # [0, 1] images; [-1, 1] ultrasound RF
    save_grid(
        samples, figures / f"{name}_samples.png", f"pretrained('{name}'): {steps} Heun steps", (low, high)
    )
    noise = low + (high - low) * torch.rand_like(samples)
    n_ref = min(num_samples, held_out.shape[0])
    gaussian = fitted_gaussian(train)
    mse = {s: denoising_mse(prior.denoise, held_out, s) for s in SIGMAS}
    mmse = {s: denoising_mse(gaussian.denoise, held_out.double(), s) for s in SIGMAS}
    classifier = noise_classifier(name) if recipe.classifier_steps else None
    return {
        "prior": name,
        "load_seconds": load_time,
        "sample_seconds": sample_time,
        "nearest_train_distance": {
            "samples": nearest_distance(samples, train),
            "held_out": nearest_distance(held_out[:n_ref], train),
            "uniform_noise": nearest_distance(noise, train),
        },
        "sw_samples_vs_held_out": metrics.sliced_wasserstein(samples[:n_ref], held_out[:n_ref]),
        "sw_train_vs_held_out": metrics.sliced_wasserstein(train[:n_ref], held_out[:n_ref]),
        "sw_gaussian_vs_held_out": metrics.sliced_wasserstein(
            gaussian.sample(n_ref, seed=0).float(), held_out[:n_ref]
        ),
        "denoising_mse": mse,
        "gaussian_mmse": mmse,
        "classifier": classifier
        and classifier_accuracy(classifier, held_out, torch.Generator().manual_seed(1)),
        "classifier_steps": recipe.classifier_steps,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=list(RECIPES))
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--docs", type=Path, default=Path("docs/figures"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/priors.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [evaluate(name, args.num_samples, args.steps, args.docs) for name in args.names]
    for r in rows:
        d = r["nearest_train_distance"]
        print(
            f"\n== {r['prior']}: load {r['load_seconds']:.2f} s, {args.num_samples} samples in {r['sample_seconds']:.1f} s"
        )
        print(
            f"nearest-training-image distance: samples {d['samples']:.3f}, held-out {d['held_out']:.3f}, "
            f"uniform noise {d['uniform_noise']:.3f}"
        )
        print(
            f"SW to held-out: samples {r['sw_samples_vs_held_out']:.4f}, training images "
            f"{r['sw_train_vs_held_out']:.4f}, fitted Gaussian {r['sw_gaussian_vs_held_out']:.4f}"
        )
        print(f"{'sigma':>8} {'network MSE':>12} {'Gaussian MMSE':>14}")
        for s in SIGMAS:
            print(f"{s:>8} {r['denoising_mse'][s]:>12.5f} {r['gaussian_mmse'][s]:>14.5f}")
        c = r["classifier"]
        if c is None:
            continue
        print(
            f"noise-level classifier: exact {c['exact']:.2f}, within one level {c['within_one_level']:.2f}, "
            f"RMS log-sigma error {c['rms_log_sigma_error']:.3f}"
        )
    command = shlex.join(["python", "benchmarks/priors.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "rows": rows})
    print(f"\nJSON written to {args.out}; sample grids in {args.docs}")
    return rows


if __name__ == "__main__":
    main()
