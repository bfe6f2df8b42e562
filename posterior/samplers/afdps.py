"""AFDPS: approximation-free ensemble sampling, as a twisted SMC sampler verified on exact posteriors.

Chen, Ren, Min, Ying & Izzo, "Solving Inverse Problems via Diffusion-Based Priors: An
Approximation-Free Ensemble Sampling Approach", arXiv:2506.03979 (2025).

The paper's particles follow the prior's reverse SDE with the drift shifted by the likelihood
gradient and carry Feynman-Kac weights for the targets ``p_sigma(x) exp(-mu(x))``, ``mu = -log p(y | x)``
(the clean likelihood at every noise level). That continuous-time identity is right, but its
discretisation has infinite-variance weights whenever the prior's step moves particles further than the
likelihood's width (measured: it diverges on every mixture benchmark problem). This implementation
keeps the method's principle (exact weights, no approximation of ``p(y | x_sigma)``, error -> 0 as
``N`` grows) and changes the bridge (``docs/derivations.md``):

- targets ``pi_sigma ∝ p_sigma(x) psi_sigma(x)`` with a twist ``psi_sigma`` that widens with ``sigma``
  and equals ``p(y | x)`` at ``sigma = 0`` (``twist=``; see :mod:`posterior.samplers.twists`);
- the prior's ancestral kernel ``N(m, v)`` (``kernel="ancestral"``), or the probability-flow ODE's
  Euler step (``kernel="ode"``, the paper's ``V = 0`` variant: deterministic particles, diversity only
  from resampling; not recommended);
- the guided proposal ``x' = m + v grad log psi_sigma(x) + sqrt(v) xi`` with the discrete-time weight
  ``log N(x'; m, v) - log N(x'; m + v g, v) + log psi_{sigma'}(x') - log psi_sigma(x)``, exact for any
  step size: no Laplacian, no Hutchinson estimate; for the ``noisy`` twist the locally optimal
  proposal (a Gaussian product per observed SVD coordinate, ``proposal="optimal"``);
- start: reference draws ``N(0, sigma_max^2 I)`` weighted by ``psi_{sigma_max}`` (exact start weight
  for analytic priors).

Output: weighted particles of ``chains`` independent runs, or an unweighted set (``resample=True``);
``trace["log_evidence"][-1]`` estimates ``log p(y)``. Cost per particle-step: 1 NFE, no backprop
through the network (``tweedie``: plus ``r`` vector-Jacobian products, ``r`` the rank of ``A``).

Accuracy against exact posteriors, as the particles grow and at a fixed budget, and cost:
``docs/benchmarks.md`` (``benchmarks/gmm.py``, ``benchmarks/cost.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from posterior.samplers.guidance import default_tempering_scale
from posterior.samplers.linear_gaussian import LinearGaussianSVD
from posterior.samplers.settings import POSITIVE
from posterior.samplers.twists import NoisyTwist, TemperedTwist, TweedieTwist, TwistedSampler

TWISTS = ("auto", "tweedie", "noisy", "tempered", "clean")
MAX_TWEEDIE_RANK = 16


@dataclass
class AFDPS(TwistedSampler):
    """Hyperparameters of AFDPS (plus those of the SMC core: ``steps``, ``rho``, ``resampling``,
    ``ess_threshold``, ``max_bisections``, ``resample``).

    Parameters
    ----------
    twist : str
        ``"auto"`` (default): ``"tweedie"`` for linear-Gaussian problems of rank <= 16, ``"noisy"`` for
        larger linear-Gaussian ones, ``"tempered"`` otherwise. ``"clean"`` is the paper's potential
        (diverges on the benchmark; kept for comparison).
    proposal : str
        ``"auto"`` (``"optimal"`` with the noisy twist, else ``"gradient"``), ``"gradient"`` or ``"optimal"``.
    kernel : str
        ``"ancestral"`` (the reverse SDE's exact Gaussian step) or ``"ode"``.
    tempering_scale : float, optional
        ``tau_ref`` of the tempered twist; default: estimated from the likelihood's curvature.
    x0_uncertainty : bool, optional
        (SMC core) ``None`` (default): on with the ancestral kernel, off with the ODE kernel.
    """

    twist: str = "auto"
    proposal: str = "auto"
    kernel: str = "ancestral"
    tempering_scale: float | None = None

    limits = {
        "twist": TWISTS,
        "proposal": ("auto", "gradient", "optimal"),
        "kernel": ("ancestral", "ode"),
        "tempering_scale": POSITIVE,
    }

    def __post_init__(self):
        super().__post_init__()
        if self.proposal == "optimal" and self.twist not in ("auto", "noisy"):
            raise ValueError("AFDPS: proposal='optimal' needs twist='noisy'")
        if self.kernel == "ode" and self.x0_uncertainty:
            raise ValueError(
                "AFDPS: x0_uncertainty widens the ancestral kernel; kernel='ode' has no variance to widen"
            )

    def widens_kernel(self) -> bool:
        """``x0_uncertainty``, by default on with the ancestral kernel (``docs/smc.md``)."""
        return self.kernel == "ancestral" if self.x0_uncertainty is None else self.x0_uncertainty

    def setup(self, problem, prior):
        twist = self.twist
        if twist == "auto" and not LinearGaussianSVD.applies(problem):
            twist = "tempered"
        if twist in ("auto", "tweedie", "noisy"):
            lg = LinearGaussianSVD.of(problem, f"AFDPS(twist={twist!r})")
            if twist == "auto":
                twist = (
                    "tweedie"
                    if lg.tau2.numel() <= MAX_TWEEDIE_RANK and self.proposal != "optimal"
                    else "noisy"
                )
        if twist == "tweedie":
            return TweedieTwist(lg)
        if twist == "noisy":
            return NoisyTwist(lg)
        if twist == "clean":
            return TemperedTwist(None)
        return TemperedTwist(default_tempering_scale(problem, prior, self.tempering_scale))

    def propagate(self, ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread):
        optimal = isinstance(ctx, NoisyTwist) and self.proposal != "gradient"
        if self.kernel == "ancestral" and not optimal:
            return super().propagate(ctx, problem, prior, x, cache, sigma, sigma_next, generator, spread)
        x0_hat = cache["x0_hat"]
        if self.kernel == "ode":
            m, v = x0_hat + (sigma_next / sigma) * (x - x0_hat), sigma.new_zeros(())
        else:
            m, v = self.moments(x, x0_hat, sigma, sigma_next, spread)
        if optimal:
            x_next, log_norm = ctx.lg.product_move(m, v, ctx.variance(sigma_next), generator)
            new = ctx.evaluate(problem, prior, x_next, sigma_next)
            return x_next, new, log_norm + ctx.lg.log_const - cache["log_psi"]
        new = ctx.evaluate(problem, prior, m, sigma_next)
        return m, new, new["log_psi"] - cache["log_psi"]
