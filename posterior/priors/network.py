"""Adapters from a trained network in any parametrisation and schedule to the one denoiser interface."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from posterior.priors.base import DiffusionPrior, sigma_tensor
from posterior.priors.schedules import EDMSchedule, Schedule

PARAMETRIZATIONS = ("eps", "x0", "v", "score", "edm", "edm-gaussian")


class NetworkPrior(DiffusionPrior):
    """A diffusion network ``net(z, t)`` seen as a VE denoiser ``denoise(x, sigma)``.

    The network receives ``z = schedule.input_scale(sigma) * x`` and ``t = schedule.t(sigma)``
    (shape ``(n,)``) and predicts, by ``parametrization``:

    - ``"eps"``: the noise ``eps`` (the same in VE and VP coordinates): ``x0 = x - sigma * eps``;
    - ``"x0"``: the clean data: ``x0 = net(z, t)``;
    - ``"v"``: the velocity of a VP model, ``v = alpha eps - sigma_vp x0`` with
      ``alpha = 1/sqrt(1+sigma^2)``, ``sigma_vp = sigma alpha``: ``x0 = alpha z - sigma_vp v``;
    - ``"score"``: ``grad_z log p(z)`` in its input coordinates: ``x0 = x + sigma^2 c s`` with
      ``c = input_scale(sigma)``;
    - ``"edm"``: the raw EDM network ``F`` (Karras et al. 2022, eq. 7) with an :class:`EDMSchedule`:
      ``x0 = c_skip x + c_out F``;
    - ``"edm-gaussian"``: EDM's ``F`` as the residual of the exact denoiser ``D_G`` of a Gaussian
      fitted to the data (a :class:`~posterior.priors.unet.GaussianResidualUNet`), damped where the
      noise dominates: ``x0 = D_G(x) + c_out sd^2 / (sigma^2 + sd^2) F``. At large ``sigma`` every
      good denoiser is close to linear; there the network only adds a small correction, so it cannot
      fall behind the Gaussian by more than that correction (plain EDM networks trailed it there;
      ``docs/priors.md``).

    Gradients flow through the network (samplers such as DPS need them); wrap calls in
    ``torch.no_grad()`` where they do not.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        parametrization: str,
        schedule: Schedule,
        event_shape: Sequence[int] | None = None,
    ):
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a posterior.priors Schedule, got {type(schedule).__name__}")
        if parametrization == "v" and not schedule.variance_preserving:
            raise ValueError("parametrization 'v' is defined for variance-preserving schedules (VPSchedule)")
        if parametrization.startswith("edm") and not isinstance(schedule, EDMSchedule):
            raise ValueError(f"parametrization {parametrization!r} needs an EDMSchedule")
        if parametrization == "edm-gaussian" and not hasattr(net, "gaussian_denoise"):
            raise ValueError(
                "parametrization 'edm-gaussian' needs a network with gaussian_denoise (GaussianResidualUNet)"
            )
        event_shape = event_shape if event_shape is not None else getattr(net, "event_shape", None)
        if event_shape is None:
            raise ValueError("event_shape is required when the network has no event_shape attribute")
        self.net, self.parametrization, self.schedule = net, parametrization, schedule
        self.event_shape = tuple(int(s) for s in event_shape)
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max
        param = next(iter(net.parameters()), None) if isinstance(net, nn.Module) else None
        self.device = param.device if param is not None else torch.device("cpu")
        self.dtype = param.dtype if param is not None else torch.float32

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        s = sigma_tensor(sigma, x)
        lo, hi = float(s.min()), float(s.max())
        if lo < self.sigma_min * (1 - 1e-3) or hi > self.sigma_max * (1 + 1e-3):  # float32 slack
            warnings.warn(
                f"sigma in [{lo:.3g}, {hi:.3g}] leaves the network's trained range "
                f"[{self.sigma_min:.3g}, {self.sigma_max:.3g}]; its denoiser is extrapolating",
                stacklevel=2,
            )
        scale = self.schedule.input_scale(s)
        out = self.net(scale * x, self.schedule.t(s.reshape(-1)))
        if self.parametrization == "eps":
            return x - s * out
        if self.parametrization == "x0":
            return out
        if self.parametrization == "v":
            return scale * (scale * x) - s * scale * out
        if self.parametrization == "score":
            return x + s**2 * scale * out
        sd = self.schedule.sigma_data
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        if self.parametrization == "edm-gaussian":
            return self.net.gaussian_denoise(x, s) + c_out * sd**2 / (s**2 + sd**2) * out
        return sd**2 / (s**2 + sd**2) * x + c_out * out
