"""The one prior interface that samplers use: a denoiser in the variance-exploding ``sigma`` convention.

A noised sample is ``x_sigma = x0 + sigma * eps``. A prior gives Tweedie's denoiser
``denoise(x, sigma) = E[x0 | x_sigma = x]`` and the score of the noised density,
``score(x, sigma) = (denoise(x, sigma) - x) / sigma**2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from posterior.priors.integrators import ancestral_step, flow_velocity, heun_step, sigma_grid
from posterior.utils import make_generator, progress_bar, randn


def sigma_tensor(sigma: float | Tensor, x: Tensor) -> Tensor:
    """Broadcast ``sigma`` (a float, a 0-d tensor or shape ``(n,)``) to ``(n, 1, ..., 1)`` like ``x``.

    Raises a ``ValueError`` for non-positive or non-finite values, or a wrong batch size.
    """
    n = x.shape[0]
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0:
        s = s.expand(n)
    if s.shape != (n,):
        raise ValueError(f"sigma has shape {tuple(s.shape)}, expected a float or shape ({n},)")
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"sigma must be finite and > 0, got min {float(s.min()):.3g}")
    return s.reshape(n, *([1] * (x.dim() - 1)))


class DiffusionPrior:
    """A diffusion prior: a denoiser at every noise level ``sigma`` in ``[sigma_min, sigma_max]``.

    Subclasses implement :meth:`denoise`. ``event_shape`` is the shape of one sample.
    """

    event_shape: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    device: torch.device = torch.device("cpu")  # of the prior's parameters; subclasses set their own
    dtype: torch.dtype = torch.float32

    _cached = ("_location_scale",)  # filled on use (checkpoint fingerprints skip it)
    # capabilities the samplers ask for, instead of probing for methods
    has_log_prob: bool = False  # log_prob(x, sigma): the exact noised density (analytic priors)
    has_posterior: bool = False  # posterior(problem): the closed-form posterior of a linear-Gaussian problem

    def __init_subclass__(cls, **kwargs):
        """A subclass that defines ``log_prob`` or ``posterior`` has that capability unless it says otherwise."""
        super().__init_subclass__(**kwargs)
        for method, flag in (("log_prob", "has_log_prob"), ("posterior", "has_posterior")):
            if method in cls.__dict__ and flag not in cls.__dict__:
                setattr(cls, flag, True)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Tweedie's denoiser ``E[x0 | x_sigma = x]``.

        Parameters
        ----------
        x : Tensor, shape (n, *event_shape)
        sigma : float or Tensor of shape (n,)

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        raise NotImplementedError

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Score of the noised prior, ``(denoise(x, sigma) - x) / sigma^2``; shape ``(n, *event_shape)``."""
        s = sigma_tensor(sigma, x)
        return (self.denoise(x, sigma) - x) / s**2

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def channels(self) -> list[int]:
        """The channels of each independent source stacked in the event (one source: ``[event_shape[0]]``)."""
        return [self.event_shape[0]]

    def smallest_std(self) -> float | None:
        """The smallest standard deviation of the prior's components along any direction, where known
        (analytic priors); ``None`` otherwise."""
        return None

    def location_scale(self) -> tuple[Tensor, float | Tensor]:
        """Where the prior's draws lie: its mean, shape ``event_shape``, and its scale: here the root
        mean square over coordinates of the standard deviation (``sqrt(tr Cov / d)``), a float;
        analytic priors give each coordinate's standard deviation (shape ``event_shape``), exactly.

        Estimated from the denoiser at ``sigma_max``, where it is linear in ``x`` for any prior whose
        spread is well below ``sigma_max``: ``D(0) ~ mean`` and ``sigma <z, D(sigma z) - D(0)> ~ z^T Cov z``
        (16 probes ``z``, a fixed seed; two network calls, not counted as NFE, made once per prior
        and cached on it). Used by the samplers' range checks (:func:`posterior.diagnostics.check`).
        """
        cached = getattr(self, "_location_scale", None)
        if cached is None:
            sigma = float(self.sigma_max)
            z = torch.randn(
                (16, *self.event_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64
            ).to(dtype=self.dtype, device=self.device)
            with torch.no_grad():
                center = self.denoise(torch.zeros_like(z[:1]), sigma)
                moved = self.denoise(sigma * z, sigma)
            quadratic = sigma * ((moved - center) * z).reshape(16, -1).sum(1).double()
            scale = math.sqrt(max(float(quadratic.mean()), 0.0) / self.dim)
            cached = self._location_scale = (center[0], scale)
        return cached

    def check_x(self, x: Tensor, name: str = "x") -> None:
        if tuple(x.shape[1:]) != tuple(self.event_shape) or x.dim() != len(self.event_shape) + 1:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (n, *{tuple(self.event_shape)})")

    def sample(
        self,
        n: int,
        *,
        steps: int = 50,
        seed: int | torch.Generator | None = None,
        method: str = "heun",
        rho: float = 7.0,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Unconditional draws by integrating the reverse diffusion from ``sigma_max`` to 0.

        Parameters
        ----------
        n : int
            Number of draws.
        steps : int
            Number of noise levels on the EDM grid (``rho``) from ``sigma_max`` to ``sigma_min``.
            ``method="heun"`` (Karras et al. 2022, deterministic probability-flow ODE, 2 NFE per step)
            or ``"ancestral"`` (stochastic DDPM-type step, 1 NFE per step). Both end with a final
            denoising step at ``sigma_min`` (1 NFE).

        Returns
        -------
        Tensor, shape (n, *event_shape)
        """
        if method not in ("heun", "ancestral"):
            raise ValueError(f"method must be 'heun' or 'ancestral', got {method!r}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        device = device if device is not None else self.device
        gen, _ = make_generator(seed, device)
        dtype = dtype or self.dtype
        sigmas = sigma_grid(self.sigma_min, self.sigma_max, steps, rho=rho, dtype=dtype, device=device)
        x = sigmas[0] * randn((n, *self.event_shape), gen, dtype, device)
        with torch.no_grad():
            for i in progress_bar(range(len(sigmas) - 1), progress, "prior sample"):
                if method == "heun":
                    x = heun_step(flow_velocity(self.denoise), x, sigmas[i], sigmas[i + 1])
                else:
                    x = ancestral_step(x, self.denoise(x, sigmas[i]), sigmas[i], sigmas[i + 1], gen)
            return self.denoise(x, sigmas[-1])

    @staticmethod
    def from_denoiser(
        denoiser: Callable[[Tensor, Tensor], Tensor],
        event_shape: Sequence[int],
        sigma_min: float,
        sigma_max: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> DiffusionPrior:
        """A prior from any function ``denoiser(x, sigma)`` with ``x`` of shape ``(n, *event_shape)`` and ``sigma`` of shape ``(n,)``."""
        return DenoiserPrior(denoiser, event_shape, sigma_min, sigma_max, dtype, device)

    @staticmethod
    def from_model(net, *, parametrization: str, schedule, event_shape: Sequence[int] | None = None):
        """Wrap a network trained in any parametrisation and schedule; see :class:`NetworkPrior`."""
        from posterior.priors.network import NetworkPrior

        return NetworkPrior(net, parametrization=parametrization, schedule=schedule, event_shape=event_shape)


class DenoiserPrior(DiffusionPrior):
    """A :class:`DiffusionPrior` around a plain denoiser function (see :meth:`DiffusionPrior.from_denoiser`)."""

    def __init__(self, denoiser, event_shape, sigma_min, sigma_max, dtype=torch.float32, device="cpu"):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.denoiser = denoiser
        self.event_shape = tuple(event_shape)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.dtype, self.device = dtype, torch.device(device)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        self.check_x(x)
        return self.denoiser(x, sigma_tensor(sigma, x).reshape(-1))
