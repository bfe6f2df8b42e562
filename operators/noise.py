"""Noise models: the likelihood ``p(y | A x)`` of a measurement given the noiseless forward output.

Each model gives ``log_prob(y, Ax) -> (n,)`` (summed over the measurement dimensions, batched and
differentiable in ``Ax``) and ``sample(Ax, generator)``. ``y`` has shape ``(n, *out_shape)`` or
``out_shape`` (broadcast over the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.distributions import Laplace, Poisson, StudentT

from operators.base import like
from operators.checks import Shape, as_float, check_broadcast, positive_tensor


@contextmanager
def seeded_global_rng(generator: torch.Generator | None):
    """Run code that draws from torch's global RNG (Pyro, some distributions) reproducibly.

    The global RNG states (CPU and every CUDA device, since ``torch.manual_seed`` seeds them all) are
    saved, seeded from ``generator`` (advancing it), and restored afterwards.
    """
    if generator is None:
        yield
        return
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield


def sum_event(log_p: Tensor) -> Tensor:
    """Sum a per-element log-probability of shape ``(n, *out_shape)`` to ``(n,)``."""
    return log_p.reshape(log_p.shape[0], -1).sum(1)


def broadcast_y(y: Tensor, Ax: Tensor) -> Tensor:
    y = like(y, Ax)
    return y.expand_as(Ax) if y.dim() < Ax.dim() else y


class NoiseModel:
    """Base class of measurement noise models (likelihoods).

    Subclasses list their tensor parameters in ``tensor_parameters``; each must broadcast to the
    operator's output shape (checked by :meth:`check_out_shape` when an ``InverseProblem`` is built).
    """

    tensor_parameters: tuple[str, ...] = ()

    def check_out_shape(self, out_shape: Shape) -> None:
        """Raise a ``ValueError`` unless every tensor parameter broadcasts to ``out_shape``."""
        for name in self.tensor_parameters:
            check_broadcast(getattr(self, name), out_shape, f"noise {type(self).__name__}.{name}")

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        """Log-likelihood ``log p(y | Ax)``.

        Parameters
        ----------
        y : Tensor, shape (n, *out_shape) or out_shape
        Ax : Tensor, shape (n, *out_shape)

        Returns
        -------
        Tensor, shape (n,)
        """
        raise NotImplementedError

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``y ~ p(y | Ax)``, shape ``(n, *out_shape)``."""
        raise NotImplementedError

    def check_y(self, y: Tensor) -> None:
        """Model-specific checks of an observed ``y`` (support); raises ``ValueError``."""


class GaussianNoise(NoiseModel):
    """Additive Gaussian noise ``y = A x + sigma * n``.

    Parameters
    ----------
    sigma : float or Tensor
        Standard deviation, a scalar or a tensor broadcastable to ``out_shape`` (per element); > 0.
    """

    tensor_parameters = ("sigma",)

    def __init__(self, sigma: float | Tensor):
        self.sigma = positive_tensor(sigma, "sigma")

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        sigma = like(self.sigma, Ax)
        r = (broadcast_y(y, Ax) - Ax) / sigma
        log_norm = torch.log(sigma).expand_as(Ax) + 0.5 * math.log(2 * math.pi)
        return sum_event(-0.5 * r**2 - log_norm)

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(Ax.shape, generator=generator, dtype=Ax.dtype, device=Ax.device)
        return Ax + like(self.sigma, Ax) * eps

    def variance(self, like_tensor: Tensor) -> Tensor:
        """Per-element noise variance broadcast to ``like_tensor``'s shape (without batch)."""
        return (like(self.sigma, like_tensor) ** 2).expand(like_tensor.shape)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma.tolist() if self.sigma.numel() == 1 else 'tensor'})"


class PoissonNoise(NoiseModel):
    """Photon counts ``y ~ Poisson(gain * A x)``.

    Parameters
    ----------
    gain : float
        Expected counts per unit of ``A x`` (> 0). Larger gain means less relative noise.
    min_rate : float
        Rates are clamped below at this value so that ``log_prob`` stays finite (and differentiable)
        when an intermediate estimate of ``A x`` is negative; clamping is documented, not silent for
        observations: ``y`` itself must be non-negative.
    """

    tensor_parameters = ("gain",)

    def __init__(self, gain: float = 1.0, min_rate: float = 1e-6):
        self.gain = positive_tensor(gain, "gain")
        self.min_rate = as_float(min_rate, "min_rate", gt=0)

    def rate(self, Ax: Tensor) -> Tensor:
        return (like(self.gain, Ax) * Ax).clamp_min(self.min_rate)

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        return sum_event(Poisson(self.rate(Ax), validate_args=False).log_prob(broadcast_y(y, Ax)))

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.poisson(self.rate(Ax), generator=generator)

    def check_y(self, y: Tensor) -> None:
        if bool((y < 0).any()):
            raise ValueError("y must be non-negative counts for PoissonNoise")


class LaplaceNoise(NoiseModel):
    """Additive Laplace noise with scale ``b`` (> 0): density ``exp(-|y - Ax| / b) / (2 b)``."""

    tensor_parameters = ("b",)

    def __init__(self, b: float | Tensor):
        self.b = positive_tensor(b, "b")

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        return sum_event(Laplace(Ax, like(self.b, Ax), validate_args=False).log_prob(broadcast_y(y, Ax)))

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(Ax.shape, generator=generator, dtype=Ax.dtype, device=Ax.device) - 0.5
        u = u.clamp(-0.5 + torch.finfo(Ax.dtype).eps, 0.5 - torch.finfo(Ax.dtype).eps)
        return Ax - like(self.b, Ax) * torch.sign(u) * torch.log1p(-2 * u.abs())


class StudentTNoise(NoiseModel):
    """Additive Student-t noise with ``df`` degrees of freedom and ``scale`` (both > 0); heavy tails."""

    tensor_parameters = ("df", "scale")

    def __init__(self, df: float | Tensor, scale: float | Tensor = 1.0):
        self.df = positive_tensor(df, "df")
        self.scale = positive_tensor(scale, "scale")

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        dist = StudentT(like(self.df, Ax), Ax, like(self.scale, Ax), validate_args=False)
        return sum_event(dist.log_prob(broadcast_y(y, Ax)))

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with seeded_global_rng(generator):
            dist = StudentT(like(self.df, Ax), Ax, like(self.scale, Ax))
            return dist.sample()


class PyroLikelihood(NoiseModel):
    """A likelihood written as a Pyro model.

    ``model(z)`` receives the operator output ``z = A(x)`` of shape ``(n, *out_shape)`` and calls
    ``pyro.sample(site, dist, obs=...)`` once. The library conditions that site on the observed
    ``y`` (overriding whatever the model passed as ``obs``) and reads the per-particle
    log-likelihood from the site's ``log_prob`` in a Pyro trace, summed over every dimension but
    the first. The model must broadcast over the batch dimension.

    Other ``pyro.sample`` sites are the forward model's unknown parameters (a gain, a background
    level), each shared by every ``x``, with the prior the model gives them: sample them jointly with
    ``x`` by :func:`posterior.sample_with_parameters`, or fix them with :meth:`condition`. A
    likelihood with unfixed latent sites refuses to evaluate ``log_prob``.

    Parameters
    ----------
    model : callable
        The user's Pyro function of ``z``.
    site : str
        Name of the observed sample site (default ``"y"``).

    Examples
    --------
    >>> def model(z):  # Poisson counts with a log link
    ...     return pyro.sample("y", dist.Poisson(torch.exp(z)).to_event(1), obs=y_obs)
    >>> noise = PyroLikelihood(model)
    >>> def with_gain(z):  # an unknown detector gain, log-normal a priori
    ...     gain = pyro.sample("gain", dist.LogNormal(0.0, 0.3))
    ...     return pyro.sample("y", dist.Poisson(gain * torch.exp(z)).to_event(1), obs=y_obs)
    >>> PyroLikelihood(with_gain).condition(gain=torch.tensor(1.2))  # the gain known
    """

    def __init__(self, model: Callable[[Tensor], Tensor], site: str = "y"):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if not isinstance(site, str):
            raise TypeError(
                f"site must be a str (the observed sample site's name), got {type(site).__name__}"
            )
        self.model, self.site = model, site

    def _trace(self, y: Tensor | None, Ax: Tensor):
        from pyro import poutine

        model = self.model if y is None else poutine.condition(self.model, data={self.site: y})
        tr = poutine.trace(model).get_trace(Ax)
        if self.site not in tr.nodes:
            raise ValueError(f"the Pyro model has no sample site named {self.site!r}")
        return tr

    def _latent(self, tr) -> dict:
        from pyro.poutine.util import site_is_subsample

        return {
            k: v["fn"]
            for k, v in tr.nodes.items()
            if v["type"] == "sample" and not v["is_observed"] and k != self.site and not site_is_subsample(v)
        }

    def trace(self, y: Tensor | None, Ax: Tensor):
        """The Pyro trace of the model at ``Ax`` with the site conditioned on ``y`` (none: sampled);
        ``ValueError`` while latent sites are not fixed."""
        tr = self._trace(y, Ax)
        latent = list(self._latent(tr))
        if latent:
            raise ValueError(
                f"the Pyro model has latent sample sites {latent} (unknown parameters): sample them with "
                "posterior.sample_with_parameters, or fix them with PyroLikelihood.condition(name=value)"
            )
        return tr

    def latent_sites(self, Ax: Tensor) -> dict:
        """The latent sample sites besides the observed one and their priors, ``{name: distribution}``,
        read from a trace of the model at ``Ax`` (shape ``(n, *out_shape)``; a valid operator output,
        e.g. ``y[None]``). Each unknown parameter is one value shared by every ``x`` with a prior of its
        own, so a second trace (other random draws, at ``[Ax / 2, Ax]``) must give every site the same
        prior: a site inside a plate over the batch, or whose prior depends on another site or on
        ``Ax``, is refused. The user's global random state is left as it was."""
        from pyro import poutine
        from pyro.poutine.messenger import Messenger

        class LastSite(Messenger):  # the site being sampled, to name it when its prior cannot be
            name = None

            def _pyro_sample(self, msg):
                self.name = msg["name"]

        with poutine.block(), LastSite() as last:  # block: no side effects on a surrounding inference
            try:
                with seeded_global_rng(torch.Generator().manual_seed(0)):
                    first = self._trace(None, Ax)
                with seeded_global_rng(torch.Generator().manual_seed(1)):
                    second = self._trace(None, torch.cat([Ax / 2, Ax]))
            except NotImplementedError as err:
                raise ValueError(
                    f"the latent site {last.name!r} cannot be sampled ({str(err).splitlines()[0]}): an unknown "
                    "parameter needs a proper prior distribution"
                ) from err
        sites, again = self._latent(first), self._latent(second)
        for name, fn in sites.items():
            if name not in again or again[name].batch_shape != fn.batch_shape:
                raise ValueError(
                    f"the latent site {name!r} changes with the batch of x (inside a plate over the batch?): an "
                    "unknown parameter of the forward model must be one value shared by every x"
                )
            value = first.nodes[name]["value"]
            try:
                same = bool(torch.allclose(fn.log_prob(value), again[name].log_prob(value)))
            except ValueError:  # the value is outside the other trace's support
                same = False
            if not same:
                raise ValueError(
                    f"the prior of the latent site {name!r} changes between traces (it depends on another "
                    "site, or on A(x)): each unknown parameter needs a fixed prior of its own"
                )
        return sites

    def condition(self, **values: Tensor) -> PyroLikelihood:
        """This likelihood with latent sites fixed to ``values`` (Pyro's ``condition``; a name that is
        no site of the model fixes nothing, and the site it meant stays latent)."""
        from pyro import poutine

        if self.site in values:
            raise ValueError(f"{self.site!r} is the observed site; condition the latent ones")
        return PyroLikelihood(poutine.condition(self.model, data=dict(values)), self.site)

    def log_prob(self, y: Tensor, Ax: Tensor) -> Tensor:
        node = self.trace(broadcast_y(y, Ax), Ax).nodes[self.site]
        log_p = node["fn"].log_prob(node["value"])
        if log_p.dim() == 0 or log_p.shape[0] != Ax.shape[0]:
            raise ValueError(
                f"site {self.site!r} has log_prob shape {tuple(log_p.shape)}; the model must broadcast over the "
                f"batch of {Ax.shape[0]} inputs (the first dimension of its argument)"
            )
        return log_p.reshape(Ax.shape[0], -1).sum(1)

    def sample(self, Ax: Tensor, generator: torch.Generator | None = None) -> Tensor:
        from pyro import poutine

        with seeded_global_rng(generator):
            tr = poutine.trace(poutine.uncondition(self.model)).get_trace(Ax)
        return tr.nodes[self.site]["value"].detach()
