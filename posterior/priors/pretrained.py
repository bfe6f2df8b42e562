"""Bundled pretrained priors, loaded offline from safetensors files inside the package.

``digits``
    16x16 handwritten digits in [0, 1]: scikit-learn's digits (1500 images of a fixed split; 297 held
    out) upsampled bilinearly from 8x8, random shifts of up to 1 pixel. A Gaussian-residual UNet
    (widths (32, 64, 64), 925,793 parameters), 3000 steps x batch 64 (``posterior train digits``,
    38 min on one CPU thread beside other jobs). Held-out denoising MSE 0.00097 at sigma 0.1 against 0.00227 for a
    fitted Gaussian; noise-level classifier within one level for 90% of held-out images.
``phantoms``
    32x32 CT-style ellipse phantoms in [0, 1] (:func:`posterior.data.phantoms`, fresh each step).
    Gaussian-residual UNet (widths (16, 32, 64, 64), 951,025 parameters), 4000 steps x batch 32
    (``posterior train phantoms``, 41 min). Held-out MSE 0.00116 at sigma 0.1 against 0.00188;
    classifier 91% within one level.

``us-tissue``, ``us-haze``
    32x32 patches of mu-law companded RF in [-1, 1] (tissue echoes; multipath haze) cut from simulated
    256-line x 512-sample echocardiography frames (:func:`posterior.data.ultrasound_patches`, a pool of
    16,384 patches, random left-right and sign flips). Gaussian-residual UNets (widths (16, 32, 64,
    64), 951,025 parameters), 2500 steps x batch 32 (``posterior train us-tissue``, 23 min each, the
    two side by side). Held-out MSE at sigma 0.1: 0.00146 against 0.00309 for a fitted Gaussian
    (tissue), 0.00058 against 0.00086 (haze). No noise-level classifier. They are the two priors of
    ultrasound dehazing (``docs/dehazing.md``).

All four learn the residual of the exact denoiser of a Gaussian fitted to their training data
(``"edm-gaussian"``), so they beat it where a denoiser can (sigma <= 1) and tie it where every good
denoiser is close to linear (sigma >= 3); see ``docs/priors.md`` for every figure.
The metadata of each file (:func:`info`) holds its recipe, parameter count and training command;
:mod:`posterior.priors.training` retrains them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

from posterior.priors.network import NetworkPrior
from posterior.priors.noise_level import NoiseLevelClassifier
from posterior.priors.training import FORMAT_CLASSIFIER, FORMAT_PRIOR, build_prior
from posterior.priors.unet import GaussianResidualUNet, UNet

WEIGHTS = Path(__file__).parent / "weights"
NAMES = ("digits", "phantoms", "us-tissue", "us-haze")


def _resolve(name_or_path: str | os.PathLike, suffix: str) -> Path:
    if str(name_or_path) in NAMES:
        return WEIGHTS / f"{name_or_path}{suffix}.safetensors"
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(
            f"unknown prior {str(name_or_path)!r}: expected one of {NAMES} or a path to a weight file"
        )
    return path


def _read(path: Path, expected_format: str) -> tuple[dict, dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; retrain it with `posterior train`")
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        if meta.get("format") != expected_format:
            raise ValueError(f"{path} is not a {expected_format} file")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


def info(name_or_path: str | os.PathLike) -> dict:
    """Metadata of a bundled prior: data recipe, network, training command, quality figures."""
    return _read(_resolve(name_or_path, ""), FORMAT_PRIOR)[0]


def pretrained(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> NetworkPrior:
    """Load a bundled prior by name (``"digits"``, ``"phantoms"``, ``"us-tissue"``, ``"us-haze"``) or a weight
    file written by ``posterior train``.

    Returns a :class:`NetworkPrior` (EDM preconditioning) in evaluation mode with frozen parameters;
    gradients still flow to its inputs.
    """
    meta, tensors = _read(_resolve(name_or_path, ""), FORMAT_PRIOR)
    unet = meta["unet"]
    if "gaussian_residual" in unet:
        net = GaussianResidualUNet(unet["gaussian_residual"], unet["widths"], unet["blocks"], unet["emb_dim"])
    else:
        net = UNet(unet["channels"], unet["widths"], unet["blocks"], unet["emb_dim"])
    net.load_state_dict(tensors)
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return build_prior(net, meta)


def noise_classifier(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> NoiseLevelClassifier:
    """The noise-level classifier bundled with a prior (``p(sigma index | x)`` on its log-uniform grid)."""
    path = _resolve(name_or_path, "-noise") if str(name_or_path) in NAMES else Path(name_or_path)
    meta, tensors = _read(path, FORMAT_CLASSIFIER)
    config = meta["config"]
    classifier = NoiseLevelClassifier(config["channels"], tensors["sigmas"], config["width"])
    classifier.load_state_dict(tensors)
    classifier.held_out_accuracy = meta.get("held_out_accuracy")
    return classifier.to(device=device, dtype=dtype).eval().requires_grad_(False)
