"""Quality evidence for the bundled priors.

For each prior: a grid of unconditional samples (PNG), the distance from samples to their nearest
training image against the same for noise images and for held-out images, the sliced Wasserstein
distance between samples and held-out images in pixel space against the held-out-vs-training floor,
the denoising MSE across sigma on held-out images against two yardsticks fitted to the recipe's
reference images (``Recipe.reference``: training images without augmentation that changes their
distribution): the exact MMSE
denoiser of a Gaussian with their mean and covariance, and the exact MMSE denoiser of their empirical
distribution (point masses at the images); each with the paired standard error over held-out images.
For the ultrasound priors, also a Gaussian fitted to unflipped pool patches (training flips them), and
the noise-level classifier's held-out accuracy.

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
from posterior.priors.training import (  # noqa: E402
    GAUSSIAN_FIT_SIZE,
    RECIPES,
    classifier_accuracy,
    ultrasound_pool,
)
from posterior.utils import atomic_write, write_json  # noqa: E402

SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def fitted_gaussian(train: torch.Tensor) -> Gaussian:
    """The Gaussian prior with the training data's mean and covariance (float64; ridge 1e-6)."""
    flat = train.reshape(train.shape[0], -1).to(torch.float64)
    cov = torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=torch.float64)
    return Gaussian(flat.mean(0).reshape(train.shape[1:]), cov)


def empirical_denoiser(train: torch.Tensor):
    """The exact MMSE denoiser of the empirical distribution of ``train`` (equal point masses at its
    images): ``D(x) = sum_i softmax_i(-||x - x_i||^2 / 2 sigma^2) x_i``, in float64."""
    flat = train.reshape(train.shape[0], -1).to(torch.float64)

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        logits = -torch.cdist(x.reshape(x.shape[0], -1).to(torch.float64), flat).pow(2) / (2 * sigma**2)
        return (torch.softmax(logits, 1) @ flat).reshape(x.shape)

    return denoise


def denoising_errors(denoise, x0: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Per held-out image ``x0[i]``, the mean squared error per pixel of ``denoise(x0 + sigma eps, sigma)``
    (float64, shape ``(n,)``).

    ``eps`` is drawn in float32 whatever the dtype of ``x0``, so that every denoiser sees the same noisy
    images (a paired comparison; unpaired, the MSE at sigma = 3 moves by 3%)."""
    g = torch.Generator().manual_seed(seed)
    noisy = x0 + sigma * torch.randn(x0.shape, generator=g).to(x0.dtype)
    with torch.no_grad():
        return (denoise(noisy, sigma).to(torch.float64) - x0).pow(2).reshape(x0.shape[0], -1).mean(1)


def denoising_table(held_out: torch.Tensor, denoisers: dict) -> dict:
    """Per sigma and denoiser, the held-out MSE, and each yardstick's paired difference to the network:
    ``{sigma: {"network": mse, name: mse, "network_minus_" + name: [mean, standard error]}}``."""
    table = {}
    for sigma in SIGMAS:
        errors = {
            name: denoising_errors(d, held_out if name == "network" else held_out.double(), sigma)
            for name, d in denoisers.items()
        }
        entry = {name: float(e.mean()) for name, e in errors.items()}
        for name, e in errors.items():
            if name != "network":
                d = errors["network"] - e
                entry[f"network_minus_{name}"] = [float(d.mean()), metrics.standard_error(d)]
        table[sigma] = entry
    return table


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
    held_out, train = recipe.held_out(), recipe.reference()
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
    denoisers = {
        "network": prior.denoise,
        "gaussian": gaussian.denoise,
        "empirical": empirical_denoiser(train),
    }
    if name.startswith("us-"):  # training flips the pool's patches; the held-out ones are not flipped
        unflipped = ultrasound_pool(name.removeprefix("us-"))[:GAUSSIAN_FIT_SIZE]
        denoisers["gaussian_unflipped"] = fitted_gaussian(unflipped).denoise
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
        "reference_images": train.shape[0],
        "denoising": denoising_table(held_out, denoisers),
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
        print(f"{'sigma':>8} {'network':>9} {'Gaussian':>9} {'empirical':>9}  network minus yardstick (se)")
        for s, e in r["denoising"].items():
            paired = ", ".join(
                f"{k.removeprefix('network_minus_')} {v[0] / v[1]:+.1f}"
                for k, v in e.items()
                if k.startswith("network_minus_")
            )
            print(f"{s:>8} {e['network']:>9.5f} {e['gaussian']:>9.5f} {e['empirical']:>9.5f}  {paired}")
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
