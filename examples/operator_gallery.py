"""The operator gallery: each measurement operator applied to the Shepp-Logan phantom, and its adjoint.

Writes ``docs/figures/operators.png``: the phantom, then for every operator the measurement ``y = A x``
(as an image where it is one) and ``A^T y`` (linear operators) or the pseudo-inverse-free
back-projection the operator offers. Needs scikit-image (the ``data`` extra).

    python examples/operator_gallery.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib.figure import Figure

import operators as ops
from posterior.data import shepp_logan


def main(out: Path = Path("docs/figures/operators.png")) -> Path:
    torch.set_num_threads(1)
    x = shepp_logan(64).double().reshape(1, 1, 64, 64)
    shape = (1, 64, 64)
    radon = ops.Radon(torch.arange(0.0, 180.0, 4.0), 64)  # degrees
    mri = ops.MRI(ops.MRI.cartesian_mask((64, 64), acceleration=4, seed=0))
    gallery = {
        "Inpainting.random (30% observed)": ops.Inpainting.random(shape, 0.3, seed=0),
        "Inpainting.box": ops.Inpainting.box(shape, 16, 16, 24, 32),
        "Blur.gaussian (std 2)": ops.Blur.gaussian(shape, std=2.0),
        "Blur.motion (9 px, 30 deg)": ops.Blur.motion(shape, 9.0, 30.0),
        "Downsample (x4)": ops.Downsample(shape, 4),
        "Radon (44 angles)": radon,
        "MRI (4x Cartesian)": mri,
        "PhaseRetrieval (x2)": ops.PhaseRetrieval(shape, 2.0),
    }
    fig = Figure(figsize=(2.2 * (len(gallery) + 1), 4.6), layout="constrained")
    axes = fig.subplots(2, len(gallery) + 1)
    axes[0, 0].imshow(x[0, 0].numpy(), cmap="gray")
    axes[0, 0].set_title("x (Shepp-Logan)", fontsize=8)
    axes[1, 0].axis("off")
    for k, (name, A) in enumerate(gallery.items(), start=1):
        y = A(x)
        shown = y[0, 0] if y.dim() == 4 and y.shape[-1] != 2 else y[0]
        if isinstance(A, ops.MRI):
            shown = torch.log1p(torch.linalg.vector_norm(y[0, 0], dim=-1))  # |k-space|, log scale
        elif isinstance(A, ops.PhaseRetrieval):
            shown = torch.log1p(torch.fft.fftshift(y[0, 0]))
        axes[0, k].imshow(shown.numpy(), cmap="gray", aspect="auto")
        axes[0, k].set_title(f"{name}\ny = A x", fontsize=8)
        if isinstance(A, ops.LinearOperator):
            back = radon.fbp(y) if A is radon else A.adjoint(y)
            axes[1, k].imshow(back[0, 0].numpy(), cmap="gray")
            axes[1, k].set_title("FBP" if A is radon else "A^T y", fontsize=8)
        else:
            axes[1, k].axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


if __name__ == "__main__":
    print(f"written to {main()}")
