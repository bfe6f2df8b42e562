"""RED-Diff: variational posterior with a diffusion regulariser.

Mardani, Song, Kautz & Vahdat, "A Variational Perspective on Solving Inverse Problems with
Diffusion Models", ICLR 2024, arXiv:2305.04391.

A Gaussian ``q(x0 | y) = N(mu, diag(exp(2 rho)))`` is fitted by Adam over a descending noise
schedule ``sigma_1 > ... > sigma_K`` (geometric, then a tail held at ``sigma_min``). Iteration ``k``
draws ``xi, eps ~ N(0, I)`` and minimises

    x0 = mu + exp(rho) xi,    eps_hat = (x0 + sigma_k eps - D(x0 + sigma_k eps, sigma_k)) / sigma_k
    L = -log p(y | x0) + lam w(sigma_k) <stopgrad(eps_hat - beta eps), x0> - sum(rho)

(one denoiser call, no backpropagation through the network). ``-beta eps`` is a zero-mean control
variate: the paper's ``beta = 1``; here (``beta="lagged"``) the per-sample least-squares coefficient
(:func:`control_variate`) fitted at the *previous* iteration, which removes most of the noise that
``beta = 1`` adds at small ``sigma`` while staying independent of this iteration's ``eps``, so that
``E[beta eps] = 0`` holds exactly (a coefficient fitted on the same ``eps`` correlates with it and
shrinks the prior term by about ``1 - 1/d``, which inflates the variances in low dimension:
``docs/baselines.md``). By Stein's identity ``E[(eps_hat - eps) / sigma] = -grad log p_sigma(x0)``:
with ``w = 1 / sigma`` and ``lam = 1`` the regulariser's gradient is the score of the prior smoothed
at ``sigma``, and with the entropy term ``-sum(rho)`` this is stochastic variational inference of
``KL(q || p(x0 | y))`` against the smoothed prior.

Over the averaging tail the mean of the iterates in its second half is compared with that of its
first (``trace["unsettled"]``, :meth:`RedDiff.drift_ratio`): a fit still moving warns through
:func:`posterior.diagnostics.check`.

Modes:

- ``"point"``: ``rho`` is dropped (``x0 = mu``); each draw is an independent restart, a
  variational *mode*, not a posterior sample (``kind = "variational-modes"``).
- ``"gaussian"``: one ``q`` per chain, ``num_samples`` draws from each (``kind = "variational"``).
  For a linear-Gaussian problem the expected data term is used in closed form,
  ``E_q[-log p(y | x0)] = -log p(y | A mu) + sum_j c_j exp(2 rho_j) / 2`` with
  ``c = diag(A^T R^-1 A)`` (a Monte-Carlo data term stalls Adam along flat directions).

Defaults are the calibrated recipe measured on exact Gaussian posteriors (``w = 1/sigma``,
``lam = 1``, 1000 iterations, Adam lr 0.05 with betas (0.9, 0.99), ``sigma_min = 0.1``, 30% tail),
not the paper's ``w = sigma`` and ``lam = 0.25``: with ``w = sigma`` the prior term vanishes at
small ``sigma``, so the point estimate is not the MAP and the Gaussian variances diverge.
:meth:`RedDiff.paper` gives the published settings with the lambda conversion. A diagonal ``q``
matches ``1 / diag(posterior precision)``, below the marginal variances when the posterior is
correlated; on multimodal posteriors RED-Diff is mode-seeking (``docs/benchmarks.md``): its spread is
not posterior uncertainty there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.optim.adam import adam

from operators import GaussianNoise, LinearOperator
from posterior.diagnostics import rms
from posterior.problem import InverseProblem
from posterior.samplers.base import Sampler, one_y_per_chain
from posterior.samplers.kernel import Info, Kernel
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE, Range, at_least
from posterior.utils import randn

WEIGHTINGS = {
    "inverse": lambda s: 1 / s,
    "linear": lambda s: s,
    "sqrt": lambda s: s**0.5,
    "square": lambda s: s**2,
    "const": lambda s: 1.0,
}
# a fit whose averaged iterates moved this much over the tail (in q's standard deviations, or in the
# prior's scale for point estimates) has not settled
DRIFT_TOLERANCE = {"gaussian": 0.5, "point": 0.03}
DENSE_LIMIT = 4096  # largest signal size for which diag(A^T R^-1 A) comes from the dense matrix


def control_variate(eps_hat: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Per-sample least-squares coefficient ``beta = <eps_hat, eps> / <eps, eps>``, shape ``(n, 1, ..., 1)``.

    The multiple of ``eps`` closest to ``eps_hat``: the paper's ``beta = 1`` is right at large ``sigma``
    (``eps_hat ~ eps``), but at small ``sigma`` ``eps_hat`` barely depends on ``eps`` and subtracting
    ``eps`` *adds* unit noise per coordinate, amplified by ``w = 1 / sigma``. Used one iteration late
    (:meth:`RedDiff.control_variate_coefficient`), so that it is independent of the ``eps`` it multiplies.
    """
    dims = tuple(range(1, eps.dim()))
    return (eps_hat * eps).sum(dims, keepdim=True) / (eps * eps).sum(dims, keepdim=True)


@dataclass
class RedDiff(Sampler):
    """Hyperparameters of RED-Diff.

    Parameters
    ----------
    steps : int
        Adam iterations ``K``, one NFE each.
    mode : str
        ``"point"`` (independent restarts; variational modes) or ``"gaussian"`` (diagonal Gaussian VI).
    lam : float
        Regulariser weight ``lambda`` (in this module's sum-reduced, sigma_y-weighted loss; see
        :meth:`paper_lambda` for the published values).
    weighting : str
        ``w(sigma)``: ``"inverse"`` (1/sigma, calibrated), ``"linear"`` (sigma, the paper's
        ``sqrt(1 - abar)/sqrt(abar)``), ``"sqrt"``, ``"square"`` or ``"const"``.
    lr : float
        Adam step size (per coordinate, in data units).
    sigma_min, sigma_max : float, optional
        Ends of the geometric schedule; ``sigma_max`` defaults to the prior's. ``sigma_min`` should be
        about 0.1 of the data's standard deviation (smaller values inflate the variances through
        gradient noise).
    tail_fraction : float
        Fraction of the iterations held at ``sigma_min``.
    init_std : float
        Initial standard deviation of ``q`` (``"gaussian"`` mode).
    init_noise : float
        Standard deviation of Gaussian noise added to the initial ``mu`` (diversifies restarts).
    init : str
        Starting ``mu``: ``"prior-mean"`` (default: the denoiser at ``sigma_max``, 1 NFE), ``"pinv"``
        (``A^+ y``, the paper's), ``"adjoint"`` (``A^T y``) or ``"zeros"``; nonlinear operators fall
        back to ``"prior-mean"``. The pseudo-inverse amplifies the noise of ill-conditioned operators:
        on digits deblurring it left RED-Diff far below the prior-mean start (``docs/benchmarks.md``).
    beta : str
        The control variate's coefficient: ``"lagged"`` (the previous iteration's least-squares fit,
        unbiased) or ``"one"`` (the paper's).
    """

    steps: int = 1000
    mode: str = "point"
    lam: float = 1.0
    weighting: str = "inverse"
    lr: float = 0.05
    sigma_min: float = 0.1
    sigma_max: float | None = None
    tail_fraction: float = 0.3
    init_std: float = 0.1
    init_noise: float = 0.0
    init: str = "prior-mean"
    beta: str = "lagged"

    limits = {
        "steps": at_least(1),
        "mode": ("point", "gaussian"),
        "lam": POSITIVE,
        "weighting": tuple(sorted(WEIGHTINGS)),
        "lr": POSITIVE,
        "sigma_min": POSITIVE,
        "sigma_max": POSITIVE,
        "tail_fraction": Range(0.0, 1.0, open_high=True),
        "init_std": POSITIVE,
        "init_noise": NON_NEGATIVE,
        "init": ("pinv", "adjoint", "prior-mean", "zeros"),
        "beta": ("lagged", "one"),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.sigma_max is not None and not self.sigma_max > self.sigma_min:
            raise ValueError(f"RedDiff: sigma_max must be > sigma_min = {self.sigma_min}, got {self.sigma_max}")

    @property
    def kind(self) -> str:
        return "variational-modes" if self.mode == "point" else "variational"

    @staticmethod
    def paper_lambda(lam: float, problem) -> float:
        """Convert a published lambda to this module's loss.

        The released code minimises ``mean((y - A x)^2) / 2 + lam w <g, x> / d`` (means over the ``m``
        measurements and ``d`` pixels, no ``sigma_y``); multiplying by ``m / sigma_y^2`` gives our
        ``||y - A x||^2 / (2 sigma_y^2) + lam' w <g, x>`` with ``lam' = lam m / (d sigma_y^2)``.
        Needs scalar Gaussian noise.
        """
        noise = problem.noise
        if not isinstance(noise, GaussianNoise) or noise.sigma.numel() != 1:
            raise ValueError("paper_lambda needs GaussianNoise with a scalar sigma")
        m, d = math.prod(problem.operator.out_shape), math.prod(problem.operator.in_shape)
        return lam * m / (d * float(noise.sigma) ** 2)

    @classmethod
    def paper(cls, problem, *, steps: int = 1000, lam: float = 0.25, lr: float = 0.05, **kwargs) -> RedDiff:
        """The published point-estimate settings: linear weighting, ``lam = 0.25`` converted by
        :meth:`paper_lambda`, ``beta = 1``, no averaging tail. ``lr = 0.05`` is the paper's 0.1 for
        images in [-1, 1] rescaled to data in [0, 1]."""
        return cls(
            steps=steps,
            mode="point",
            weighting="linear",
            lam=cls.paper_lambda(lam, problem),
            lr=lr,
            tail_fraction=0.0,
            beta="one",
            **kwargs,
        )

    def schedule(self, prior, dtype, device) -> torch.Tensor:
        """``steps`` noise levels: geometric from ``sigma_max`` to ``sigma_min``, then the tail."""
        sigma_max = self.sigma_max if self.sigma_max is not None else prior.sigma_max
        tail = int(self.tail_fraction * self.steps)
        head = torch.logspace(
            math.log10(sigma_max), math.log10(self.sigma_min), self.steps - tail, dtype=dtype
        )
        return torch.cat([head, head.new_full((tail,), self.sigma_min)]).to(device)

    def build_kernel(self, problem, prior, chains, num_samples, group=None):
        gaussian = self.mode == "gaussian"
        if gaussian:  # one q per chain
            problem = one_y_per_chain(problem, chains, num_samples, "RedDiff(mode='gaussian')")
        return RedDiffKernel(
            self,
            problem,
            prior,
            chains,
            num_samples,
            self.schedule(prior, problem.y.dtype, problem.y.device),
            self.data_curvature(problem) if gaussian else None,
        )

    def control_variate_coefficient(self, eps_hat, eps, previous) -> tuple:
        """``(beta to use now, beta to keep for the next iteration)``. ``"lagged"``: the previous
        iteration's fit :func:`control_variate` (independent of this ``eps``, so ``E[beta eps] = 0``
        exactly; a fit on this ``eps`` shrinks the prior term by about ``1 - 1/d``); ``"one"``: the
        paper's ``beta = 1``."""
        if self.beta == "one":
            return 1.0, previous
        return previous, control_variate(eps_hat, eps)

    def drift_ratio(self, drift, std, prior) -> float:
        """How far the averaged iterates still moved over the averaging tail: the root mean square over
        coordinates (and fits) of ``drift`` (the mean of the tail's second half minus its first) in
        units of ``q``'s standard deviation (``"gaussian"``) or of the prior's scale (``"point"``,
        :meth:`DiffusionPrior.location_scale`), over the tolerance ``DRIFT_TOLERANCE[mode]``. Above 1
        the fit has not settled. It sees iterates that still move, not a fit that creeps too slowly to
        move within the tail (ill-conditioned problems: compare runs with more steps)."""
        unit = std if self.mode == "gaussian" else rms(prior.location_scale()[1])
        return float((drift / unit).pow(2).mean().sqrt()) / DRIFT_TOLERANCE[self.mode]

    def initial_mean(self, problem, prior, n: int) -> torch.Tensor:
        """The starting ``mu`` of shape ``(n, *in_shape)`` (see ``init``)."""
        y = problem.y if problem.batched else problem.y.unsqueeze(0)
        init = self.init
        if init in ("pinv", "adjoint") and not isinstance(problem.operator, LinearOperator):
            init = "prior-mean"
        with torch.no_grad():
            if init == "pinv":
                x = problem.operator.pinv(y)
            elif init == "adjoint":
                x = problem.operator.adjoint_checked(y)
            else:
                x = torch.zeros((1, *problem.operator.in_shape), dtype=y.dtype, device=y.device)
                if init == "prior-mean":  # E[x0 | x_sigma_max = 0], the prior mean up to O(1/sigma_max^2)
                    x = prior.denoise(x, prior.sigma_max)
        return x.expand(n, *x.shape[1:]).clone() if x.shape[0] == 1 else x.clone()

    @staticmethod
    def data_curvature(problem) -> torch.Tensor | None:
        """``diag(A^T R^-1 A)`` of shape ``in_shape`` for linear-Gaussian problems of size up to
        ``DENSE_LIMIT``; ``None`` otherwise (the data term is then a Monte-Carlo estimate)."""
        d = math.prod(problem.operator.in_shape)
        if not problem.is_linear_gaussian or d > DENSE_LIMIT:
            return None
        A = problem.operator.to_matrix(dtype=problem.y.dtype, device=problem.y.device)
        var = problem.noise.variance(problem.y.new_zeros(problem.operator.out_shape)).reshape(-1, 1)
        return (A**2 / var).sum(0).reshape(problem.operator.in_shape)


def adam_step(params, grads, exp_avgs, exp_avg_sqs, k: int, lr: float) -> tuple[tuple, tuple, tuple]:
    """Step ``k`` (0-based) of ``torch.optim.Adam(params, lr, betas=(0.9, 0.99))`` with torch's own update:
    the new parameters and first and second moments, each a tuple shaped like ``params`` (the inputs are
    not modified)."""
    params = [p.detach().clone() for p in params]
    exp_avgs, exp_avg_sqs = [m.clone() for m in exp_avgs], [v.clone() for v in exp_avg_sqs]
    with torch.no_grad():
        adam(
            params,
            list(grads),
            exp_avgs,
            exp_avg_sqs,
            [],
            [torch.tensor(float(k)) for _ in params],  # the step count as Adam keeps it; incremented here
            amsgrad=False,
            beta1=0.9,
            beta2=0.99,
            lr=lr,
            weight_decay=0.0,
            eps=1e-8,
            maximize=False,
        )
    return tuple(params), tuple(exp_avgs), tuple(exp_avg_sqs)


@dataclass(frozen=True)
class RedDiffState:
    mu: Tensor  # (n, *event_shape): q's means (the point estimates in "point" mode)
    rho: Tensor  # (n, *event_shape): q's log standard deviations (unused in "point" mode)
    exp_avgs: tuple[Tensor, ...]  # Adam's first moments of (mu,) or, in "gaussian" mode, (mu, rho)
    exp_avg_sqs: tuple[Tensor, ...]  # Adam's second moments, likewise
    mu_avg: Tensor  # (n, *event_shape): the Polyak averages of the tail's iterates so far
    rho_avg: Tensor  # (n, *event_shape)
    mu_half: Tensor  # (n, *event_shape): mu_avg at the tail's half (zeros before)
    beta: Tensor  # (n, 1, ..., 1): the control variate's coefficient kept for the next iteration
    losses: tuple[float, ...]  # the mean data loss of every iteration so far


@dataclass
class RedDiffKernel(Kernel):
    """RED-Diff bound to one problem (one ``y`` per chain in ``"gaussian"`` mode): ``sigmas`` the
    schedule, ``curvature`` ``diag(A^T R^-1 A)`` for the closed-form data term (``None``: Monte Carlo)."""

    settings: RedDiff
    problem: InverseProblem
    prior: object
    chains: int
    num_samples: int
    sigmas: Tensor  # (steps,)
    curvature: Tensor | None  # (*event_shape,)

    State = RedDiffState

    def __post_init__(self):
        self.steps = self.settings.steps
        self.gaussian = self.settings.mode == "gaussian"
        self.tail_start = self.steps - int(self.settings.tail_fraction * self.steps)
        self.half = self.tail_start + (self.steps - self.tail_start) // 2  # the tail's halves are compared

    def init(self, generator):
        settings, prior, y = self.settings, self.prior, self.problem.y
        n = self.chains if self.gaussian else self.chains * self.num_samples
        shape = (n, *prior.event_shape)
        mu = settings.initial_mean(self.problem, prior, n) + settings.init_noise * randn(
            shape, generator, y.dtype, y.device
        )
        rho = torch.full(shape, math.log(settings.init_std), dtype=y.dtype, device=y.device)
        zeros = torch.zeros_like(mu)
        moments = (zeros, zeros) if self.gaussian else (zeros,)
        beta = torch.ones((n, *[1] * len(prior.event_shape)), dtype=y.dtype, device=y.device)
        return RedDiffState(mu, rho, moments, moments, zeros, zeros, zeros, beta, ())

    def step(self, state, k, generator):
        settings, problem, prior = self.settings, self.problem, self.prior
        sigma, shape, dtype, device = self.sigmas[k], state.mu.shape, state.mu.dtype, state.mu.device
        with torch.enable_grad():
            mu = state.mu.detach().requires_grad_(True)  # fresh leaves for the loss's gradient
            rho = state.rho.detach().requires_grad_(self.gaussian)
            x0 = mu
            if self.gaussian:  # reparametrised draw from q
                x0 = mu + rho.exp() * randn(shape, generator, dtype, device)
            eps = randn(shape, generator, dtype, device)
            with torch.no_grad():
                x0_hat = prior.denoise(x0.detach() + sigma * eps, sigma)
                eps_hat = eps + (x0.detach() - x0_hat) / sigma
                beta_used, beta = settings.control_variate_coefficient(eps_hat, eps, state.beta)
                g = settings.lam * WEIGHTINGS[settings.weighting](sigma) * (eps_hat - beta_used * eps)
            if self.curvature is None:
                data = -problem.log_likelihood(x0)
            else:  # closed-form E_q[-log p(y | x0)]
                spread = (self.curvature * torch.exp(2 * rho)).reshape(shape[0], -1).sum(1)
                data = -problem.log_likelihood(mu) + 0.5 * spread
            loss = data.sum() + (g * x0).sum()
            if self.gaussian:
                loss = loss - rho.sum()
            fitted = (mu, rho) if self.gaussian else (mu,)
            grads = torch.autograd.grad(loss, fitted)
        fitted, exp_avgs, exp_avg_sqs = adam_step(
            fitted, grads, state.exp_avgs, state.exp_avg_sqs, k, settings.lr
        )
        mu, rho = fitted if self.gaussian else (fitted[0], state.rho)
        mu_avg, rho_avg, mu_half = state.mu_avg, state.rho_avg, state.mu_half
        if k >= self.tail_start:  # Polyak averaging of the iterates over the tail
            mu_avg = mu_avg + (mu - mu_avg) / (k - self.tail_start + 1)
            rho_avg = rho_avg + (rho - rho_avg) / (k - self.tail_start + 1)
        if k + 1 == self.half:
            mu_half = mu_avg
        losses = (*state.losses, float(data.detach().mean()))
        new = RedDiffState(mu, rho, exp_avgs, exp_avg_sqs, mu_avg, rho_avg, mu_half, beta, losses)
        return new, Info(sigma, check=(mu, rho), view={"mu": mu, "rho": rho, "x0_hat": x0_hat})

    def finish(self, state, generator):
        prior, steps, tail_start, half = self.prior, self.steps, self.tail_start, self.half
        trace = {"sigma": self.sigmas.cpu(), "data_loss": torch.tensor(state.losses)}
        if tail_start < half < steps:
            first, total = half - tail_start, steps - tail_start
            drift = (total * state.mu_avg - first * state.mu_half) / (total - first) - state.mu_half  # 2nd half - 1st
            trace["unsettled"] = torch.tensor(self.settings.drift_ratio(drift, state.rho_avg.exp(), prior))
        mu, rho = (state.mu_avg, state.rho_avg) if tail_start < steps else (state.mu, state.rho)
        if not self.gaussian:
            return mu, trace
        std, event_shape = rho.exp(), prior.event_shape
        draws = randn((self.chains, self.num_samples, *event_shape), generator, mu.dtype, mu.device)
        return (mu[:, None] + std[:, None] * draws).reshape(-1, *event_shape), trace
