"""Write the inputs of the example jobs next to this script (or in ``--out``): measurements simulated
from held-out images that the bundled priors never saw.

- ``ct.toml``: ``phantom.npy``, the Shepp-Logan phantom of scikit-image (32x32, ``posterior[data]``),
  and ``sinogram.npy``, its 30-angle parallel-beam sinogram with Gaussian noise of standard deviation
  0.5 (about 5% of the sinogram's largest value, 9.2);
- ``mri.toml``: ``kspace.npy``, its 4x Cartesian-undersampled k-space, shape ``(1, 32, 32, 2)``
  (real and imaginary parts), with Gaussian noise of standard deviation 0.02;
- ``deblur.toml``: ``digit.png`` and ``digit_blurred.png``, a held-out scikit-learn digit (16x16) and
  its Gaussian blur (std 1 pixel) with Gaussian noise of standard deviation 0.02, as 8-bit grey PNGs
  (range [0, 255]);
- ``detector.toml``: ``counts.npy``, Poisson counts of that digit through the nonlinear detector of
  ``detector.py``.

The noise, angles and masks here are those the job files declare. The inputs are committed beside the
jobs; ``python examples/jobs/make_inputs.py`` writes them again (the same bytes, from fixed seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

import operators as ops
from posterior.data import digits, shepp_logan

HERE = Path(__file__).resolve().parent


def write(out: Path) -> list[Path]:
    """Write every input into ``out``; returns their paths."""
    gen = torch.Generator().manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    files = {}

    phantom = shepp_logan(32).reshape(1, 32, 32).double()  # in [0, 1], the phantoms prior's range
    radon = ops.Radon([180.0 * k / 30 for k in range(30)], 32)  # as ct.toml: count = 30 over [0, 180)
    sinogram = ops.GaussianNoise(0.5).sample(radon(phantom[None]), gen)[0]
    files["phantom.npy"] = phantom.float().numpy()
    files["sinogram.npy"] = sinogram.float().numpy()

    mri = ops.MRI(ops.MRI.cartesian_mask((32, 32), 4.0, 0.08, 0))  # as mri.toml: acceleration 4, seed 0
    files["kspace.npy"] = ops.GaussianNoise(0.02).sample(mri(phantom[None]), gen)[0].float().numpy()

    digit = digits("test")[7].double()  # (1, 16, 16), in [0, 1]
    blur = ops.Blur.gaussian((1, 16, 16), std=1.0)  # as deblur.toml
    blurred = ops.GaussianNoise(0.02).sample(blur(digit[None]), gen)[0]
    paths = [out / name for name in files]
    for path, array in zip(paths, files.values(), strict=True):
        np.save(path, array)

    from PIL import Image

    for name, image in (("digit.png", digit), ("digit_blurred.png", blurred)):
        pixels = (255 * image[0].clamp(0, 1)).round().to(torch.uint8).numpy()
        Image.fromarray(pixels).save(out / name)  # uint8 (H, W): an 8-bit grey PNG
        paths.append(out / name)

    sys.path.insert(0, str(HERE))
    try:
        import detector
    finally:
        sys.path.remove(str(HERE))
    rate = detector.make_operator()(digit[None].float())[0]
    counts = torch.poisson(rate.double(), generator=gen)
    np.save(out / "counts.npy", counts.float().numpy())
    return [*paths, out / "counts.npy"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder for the inputs (default: beside this script)"
    )
    for path in write(parser.parse_args(argv).out):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
