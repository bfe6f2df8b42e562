"""A diffusers ``UNet2DModel`` with a DDPM-type scheduler config, loaded offline as a :class:`NetworkPrior`.

diffusers (``pip install 'posterior[diffusers]'``) is imported only here. The UNet is read from a
local folder (``local_files_only=True``; nothing is downloaded) and its scheduler config is read as
JSON and translated, at this one boundary, into our discrete VP schedule:

- ``beta_schedule="linear"``: ``VPSchedule.linear(discrete=True, num_steps=N,
  beta_min=N beta_start, beta_max=N beta_end)`` (the same betas ``linspace(beta_start, beta_end, N)``);
- ``beta_schedule="squaredcos_cap_v2"``: ``VPSchedule.cosine(discrete=True, num_steps=N)``
  (Nichol & Dhariwal 2021, betas capped at 0.999).

``prediction_type`` ``"epsilon"``, ``"v_prediction"`` and ``"sample"`` become the parametrisations
``"eps"``, ``"v"`` and ``"x0"``. The network is called at the fractional DDPM timestep ``t(sigma)``
in ``[0, N - 1]``, which the UNet's sinusoidal embedding accepts. The prior lives in the model's
own data coordinates (usually images in ``[-1, 1]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from posterior.priors.network import NetworkPrior
from posterior.priors.schedules import VPSchedule

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")
SCHEDULER_CONFIG = "scheduler_config.json"


class DiffusersUNet(nn.Module):
    """``net(z, t) = unet(z, t).sample`` for a diffusers ``UNet2DModel``.

    Parameters
    ----------
    unet : diffusers.UNet2DModel
        Unconditional, with a sinusoidal (``"positional"``) time embedding. When it has twice as
        many output as input channels (a learned variance, as in improved DDPM), only the first
        half, the mean prediction, is returned.

    Attributes
    ----------
    event_shape : tuple (in_channels, height, width)
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        config = unet.config
        if config.time_embedding_type != "positional":
            raise ValueError(
                f"unet has time_embedding_type {config.time_embedding_type!r}; only 'positional' "
                "(sinusoidal, DDPM-type) UNets are supported, since t(sigma) is fractional"
            )
        if getattr(unet, "class_embedding", None) is not None:
            raise ValueError(
                "unet is class-conditional (class_embed_type / num_class_embeds); expected unconditional"
            )
        size = config.sample_size
        if size is None:
            raise ValueError("unet.config.sample_size is None; cannot infer the event shape")
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = int(config.in_channels)
        if config.out_channels not in (self.channels, 2 * self.channels):
            raise ValueError(
                f"unet has in_channels={self.channels}, out_channels={config.out_channels}; "
                f"expected out_channels {self.channels} or {2 * self.channels} (learned variance)"
            )
        self.unet = unet
        self.event_shape = (self.channels, int(height), int(width))

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """
        Parameters
        ----------
        z : Tensor, shape (n, *event_shape)
            Network input (VP coordinates).
        t : Tensor, shape (n,)
            DDPM timesteps, possibly fractional.

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        return self.unet(z, t).sample[:, : self.channels]


def _read_schedule(config: dict, source: Path) -> tuple[VPSchedule, str]:
    """Our schedule and parametrisation from a diffusers scheduler config (DDPM defaults for missing keys)."""
    kind = config.get("beta_schedule")
    if kind is None:
        raise ValueError(
            f"{source} ({config.get('_class_name', 'unknown scheduler')}) has no beta_schedule; "
            "only DDPM-type variance-preserving schedulers are supported"
        )
    if config.get("trained_betas") is not None:
        raise ValueError(f"{source} sets trained_betas; a custom beta table is not supported")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(f"{source} sets rescale_betas_zero_snr=True; zero terminal SNR is not supported")
    n = int(config.get("num_train_timesteps", 1000))
    if kind == "linear":
        beta_start, beta_end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        schedule = VPSchedule.linear(
            discrete=True, num_steps=n, beta_min=beta_start * n, beta_max=beta_end * n
        )
    elif kind == "squaredcos_cap_v2":
        schedule = VPSchedule.cosine(discrete=True, num_steps=n)
    else:
        raise ValueError(f"{source} has beta_schedule {kind!r}; supported: {BETA_SCHEDULES}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{source} has prediction_type {prediction!r}; supported: {tuple(PREDICTION_TYPES)}")
    return schedule, PREDICTION_TYPES[prediction]


def from_diffusers(
    path: str | os.PathLike,
    *,
    subfolder_unet: str | None = None,
    subfolder_scheduler: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> NetworkPrior:
    """Load a diffusers ``UNet2DModel`` and its scheduler config from a local folder as a prior.

    Two layouts are recognised: a pipeline folder (``model_index.json`` with ``unet/`` and
    ``scheduler/`` subfolders), and a single folder holding the UNet's ``config.json`` and
    weights beside ``scheduler_config.json``. The subfolder arguments override the detection.
    Weights are read by diffusers (safetensors, or ``torch.load(weights_only=True)``); the
    network is put in eval mode with its parameters frozen (gradients still flow to inputs).

    Parameters
    ----------
    path : str or os.PathLike
        A local folder; hub model ids are not resolved.
    subfolder_unet, subfolder_scheduler : str, optional
        Subfolders of ``path`` holding the UNet and ``scheduler_config.json``.
    device, dtype : optional
        Where and in which dtype to put the network (default: as loaded, CPU float32).

    Returns
    -------
    NetworkPrior
        With ``event_shape = (in_channels, sample_size, sample_size)`` and the scheduler's
        trained ``sigma`` range.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"path {str(path)!r} is not a local folder (from_diffusers never downloads)")
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise ImportError("from_diffusers needs diffusers: pip install 'posterior[diffusers]'") from err

    pipeline = (root / "model_index.json").is_file()
    if subfolder_unet is None and pipeline and (root / "unet" / "config.json").is_file():
        subfolder_unet = "unet"
    if subfolder_scheduler is None and (root / "scheduler" / SCHEDULER_CONFIG).is_file():
        subfolder_scheduler = "scheduler"
    scheduler_file = root / (subfolder_scheduler or "") / SCHEDULER_CONFIG
    if not scheduler_file.is_file():
        raise FileNotFoundError(
            f"no {SCHEDULER_CONFIG} in {root} or {root / 'scheduler'} (subfolder_scheduler={subfolder_scheduler!r})"
        )
    schedule, parametrization = _read_schedule(json.loads(scheduler_file.read_text()), scheduler_file)

    unet = UNet2DModel.from_pretrained(str(root), subfolder=subfolder_unet, local_files_only=True)
    if device is not None or dtype is not None:
        unet = unet.to(device=device, dtype=dtype)
    unet.eval().requires_grad_(False)
    net = DiffusersUNet(unet)
    return NetworkPrior(net, parametrization=parametrization, schedule=schedule, event_shape=net.event_shape)
