"""Bundled pretrained priors, loaded offline from safetensors files inside the package.

``digits``
    16x16 handwritten digits in [0, 1]: scikit-learn's digits (1500 images of a fixed split; 297 held
    out) upsampled bilinearly from 8x8, not augmented (the held-out digits are not shifted, so neither
    are the training ones). A Gaussian-residual UNet (widths (32, 64, 64), 925,793 parameters), 3000
    steps x batch 64 (``posterior train digits``, one CPU thread), with a noise-level classifier.
``phantoms``
    32x32 CT-style ellipse phantoms in [0, 1] (:func:`posterior.data.phantoms`, fresh each step).
    Gaussian-residual UNet (widths (16, 32, 64, 64), 951,025 parameters), 4000 steps x batch 32
    (``posterior train phantoms``), with a noise-level classifier.

``us-tissue``, ``us-haze``
    32x32 patches of mu-law companded RF (tissue echoes; multipath haze) from simulated 256-line x
    512-sample echocardiography frames band-limited resampled to 64 columns, so a patch spans 128 lines
    (:func:`posterior.data.ultrasound_patches` with ``width=64``, a pool of 16,384 patches, random
    left-right and sign flips). Gaussian-residual UNets (widths (16, 32, 64, 64), 951,025
    parameters), 2500 steps x batch 32 (``posterior train us-tissue``, one thread each). No
    noise-level classifier. Use them on frames
    through :func:`ultrasound_prior`; they are the two priors of ultrasound dehazing
    (``docs/dehazing.md``).

All four learn the residual of the exact denoiser of a Gaussian fitted to their reference images
(``Recipe.reference``; ``"edm-gaussian"``), so they beat it where a denoiser can (sigma <= 1) and tie it
where every good denoiser is close to linear (sigma >= 3); see ``docs/priors.md`` for the measured figures (denoising
MSE, sample distances, classifier accuracy, training times).
The metadata of each file (:func:`info`) holds its recipe, parameter count and training command;
:mod:`posterior.priors.training` retrains them.

A weight file is checked from its header before anything is allocated: it must hold at most
:data:`MAX_NUMBERS` numbers, and :func:`pretrained` builds the network its metadata describes on the
``meta`` device (no memory) and requires the file's tensor names and shapes to match it exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from operators.imaging import BandlimitedUpsample
from posterior.priors.composite import PatchedPrior, SubspacePrior
from posterior.priors.network import NetworkPrior
from posterior.priors.noise_level import NoiseLevelClassifier
from posterior.priors.training import (
    FORMAT_CLASSIFIER,
    FORMAT_PRIOR,
    US_FRAME,
    US_PATCH,
    US_WIDTH,
    build_prior,
)
from posterior.priors.unet import GaussianResidualUNet, UNet

WEIGHTS = Path(__file__).parent / "weights"
NAMES = ("digits", "phantoms", "us-tissue", "us-haze")
MAX_NUMBERS = 50_000_000  # parameters and buffers a weight file may hold (the bundled ones: about 1 million)


def _resolve(name_or_path: str | os.PathLike, suffix: str) -> Path:
    if str(name_or_path) in NAMES:
        return WEIGHTS / f"{name_or_path}{suffix}.safetensors"
    path = Path(name_or_path)
    if not path.exists():
        raise ValueError(
            f"unknown prior {str(name_or_path)!r}: expected one of {NAMES} or a path to a weight file"
        )
    return path


def _header(path: Path, expected_format: str) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A weight file's metadata and tensor shapes, from its header alone; ``ValueError`` naming the
    file for one that is not a weight file of ``expected_format`` or holds more than :data:`MAX_NUMBERS`."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; retrain it with `posterior train`")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:  # not a safetensors file, a folder
        raise ValueError(f"{path} is not a weight file: {err}") from err
    try:
        meta = {k: json.loads(v) for k, v in raw.items()}
    except ValueError:  # metadata of another program
        meta = {}
    if meta.get("format") != expected_format:
        raise ValueError(f"{path} is not a {expected_format} file")
    size = sum(math.prod(shape) for shape in shapes.values())
    if size > MAX_NUMBERS:
        raise ValueError(f"{path} holds {size:,} numbers, more than a weight file may ({MAX_NUMBERS:,})")
    return meta, shapes


def _read(path: Path, expected_format: str) -> tuple[dict, dict]:
    meta, _ = _header(path, expected_format)
    with safe_open(str(path), framework="pt") as f:
        return meta, {k: f.get_tensor(k) for k in f.keys()}


def _network(path: Path, meta: dict, shapes: dict[str, tuple[int, ...]]) -> UNet:
    """The UNet that ``meta`` describes, on the ``meta`` device, checked against the file (:func:`_checked`)."""

    def build() -> UNet:
        unet = meta["unet"]
        if len(unet["widths"]) * unet["blocks"] > len(shapes):  # every block holds tensors of its own
            raise ValueError(f"{len(unet['widths'])} levels of {unet['blocks']} blocks")
        if "gaussian_residual" in unet:
            return GaussianResidualUNet(unet["gaussian_residual"], unet["widths"], unet["blocks"], unet["emb_dim"])
        return UNet(unet["channels"], unet["widths"], unet["blocks"], unet["emb_dim"])

    return _checked(path, shapes, build)


def _checked(path: Path, shapes: dict[str, tuple[int, ...]], build: Callable[[], torch.nn.Module]):
    """``build()`` run on the ``meta`` device (nothing allocated), its size bounded by :data:`MAX_NUMBERS`
    and its tensors' names and shapes required to be the file's ``shapes``: metadata that lies about
    the network is refused before it is allocated."""
    try:
        with torch.device("meta"):
            net = build()
    except Exception as err:  # the metadata is the file's: any failure means it describes no network
        raise ValueError(f"{path}: its metadata describes no network ({type(err).__name__}: {err})") from err
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    size = sum(math.prod(shape) for shape in expected.values())
    if size > MAX_NUMBERS:
        raise ValueError(
            f"{path}: its metadata describes a network of {size:,} numbers, more than a weight file may "
            f"hold ({MAX_NUMBERS:,})"
        )
    for name in sorted(expected.keys() | shapes.keys()):
        if expected.get(name) != shapes.get(name):
            raise ValueError(
                f"{path}: its metadata describes a network whose {name!r} has shape {expected.get(name)}, "
                f"the file holds {shapes.get(name)}"
            )
    return net


def info(name_or_path: str | os.PathLike) -> dict:
    """Metadata of a bundled prior: data recipe, network, training command, quality figures."""
    return _header(_resolve(name_or_path, ""), FORMAT_PRIOR)[0]


def pretrained(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> NetworkPrior:
    """Load a bundled prior by name (``"digits"``, ``"phantoms"``, ``"us-tissue"``, ``"us-haze"``) or a weight
    file written by ``posterior train``.

    Returns a :class:`NetworkPrior` (EDM preconditioning) in evaluation mode with frozen parameters;
    gradients still flow to its inputs. A file that is not a prior's weight file, holds more than
    :data:`MAX_NUMBERS` numbers, or whose tensors do not match the network its metadata describes
    raises ``ValueError`` naming it, before the network is allocated.
    """
    path = _resolve(name_or_path, "")
    meta, shapes = _header(path, FORMAT_PRIOR)
    net = _network(path, meta, shapes)
    net.load_state_dict(_read(path, FORMAT_PRIOR)[1], assign=True)  # the file's tensors replace the meta ones
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return build_prior(net, meta)


def ultrasound_prior(
    name_or_path: str | os.PathLike,
    frame: tuple[int, int] = US_FRAME,
    *,
    overlap: int = 8,
    max_batch: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SubspacePrior:
    """``us-tissue`` or ``us-haze`` as a prior of whole companded RF frames ``(1, samples, lines)``.

    The networks were trained on frames band-limited resampled from 256 lines to 64 columns, so each
    32x32 patch sees 128 lines. A frame of ``lines`` lines (a multiple of 4, at least 128) is
    therefore a :class:`PatchedPrior` on ``(samples, lines / 4)`` lifted by
    :class:`operators.BandlimitedUpsample` (a :class:`SubspacePrior`): laterally smooth to 1/8 cycle
    per line, where the simulated tissue keeps 99% and the haze all of its energy.

    Parameters
    ----------
    name_or_path : str or path
        ``"us-tissue"``, ``"us-haze"``, or a weight file of their recipes (``posterior train``); its
        metadata must say it was trained on band-limited frames (``lines_per_column`` 4).
    frame : (samples, lines)
        Depth samples and scan lines, on the training grid's spacing (512 samples over 12 cm and 256
        lines over 80 degrees; crops keep that spacing).
    overlap, max_batch : as in :class:`PatchedPrior`.
    device, dtype : of the network.

    Returns
    -------
    SubspacePrior
        Event shape ``(1, samples, lines)``.
    """
    per_column = US_FRAME[1] // US_WIDTH
    meta = info(name_or_path)
    if meta.get("lines_per_column") != per_column or list(meta["event_shape"]) != [1, US_PATCH, US_PATCH]:
        raise ValueError(
            f"{name_or_path!r} is not an ultrasound prior of {US_PATCH}x{US_PATCH} patches of frames "
            f"band-limited to {per_column} lines per column (its metadata: event_shape "
            f"{meta['event_shape']}, lines_per_column {meta.get('lines_per_column')})"
        )
    if len(frame) != 2:
        raise ValueError(f"frame must be (samples, lines), got {tuple(frame)}")
    samples, lines = (int(v) for v in frame)
    if lines % per_column or lines < per_column * US_PATCH or samples < US_PATCH:
        raise ValueError(
            f"frame must have >= {US_PATCH} samples and a multiple of {per_column} lines >= "
            f"{per_column * US_PATCH}, got {tuple(frame)}"
        )
    lift = BandlimitedUpsample((1, samples, lines // per_column), lines)
    patches = PatchedPrior(
        pretrained(name_or_path, device=device, dtype=dtype), lift.in_shape[1:], overlap, max_batch
    )
    return SubspacePrior(patches, lift)


def noise_classifier(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> NoiseLevelClassifier:
    """The noise-level classifier bundled with a prior (``p(sigma index | x)`` on its log-uniform grid)."""
    path = _resolve(name_or_path, "-noise") if str(name_or_path) in NAMES else Path(name_or_path)
    meta, shapes = _header(path, FORMAT_CLASSIFIER)

    def build() -> NoiseLevelClassifier:
        with safe_open(str(path), framework="pt") as f:
            sigmas = f.get_tensor("sigmas")  # (K,), on the CPU: the constructor checks its values
        return NoiseLevelClassifier(meta["config"]["channels"], sigmas, meta["config"]["width"])

    classifier = _checked(path, shapes, build)
    classifier.load_state_dict(_read(path, FORMAT_CLASSIFIER)[1], assign=True)
    classifier.held_out_accuracy = meta.get("held_out_accuracy")
    return classifier.to(device=device, dtype=dtype).eval().requires_grad_(False)
