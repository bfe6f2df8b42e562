"""TDS: the twisted diffusion sampler.

Wu, Trippe, Naesseth, Blei & Cunningham, "Practical and Asymptotically Exact Conditional Sampling in
Diffusion Models", NeurIPS 2023, arXiv:2306.17775.

Particles follow the prior's ancestral kernel ``N(m, v)`` with the proposal
``x' = m + v grad_x log psi_sigma(x) + sqrt(v) xi``, where the twist evaluates the likelihood at
Tweedie's estimate:

    psi_sigma(x) = N(y; A x0_hat(x, sigma), sigma_y^2 I + kappa r^2 A A^T),   r^2 = sigma^2 / (1 + sigma^2)

for linear-Gaussian problems (the PiGDM variance; ``kappa = 0`` is the noise-free twist), and
``p(y | x0_hat)^beta(sigma)`` with the tempering of :func:`posterior.samplers.guidance.tempering` for
any other operator and noise model. The weight increment
``log N(x'; m, v) - log N(x'; m + v g, v) + log psi_{sigma'}(x') - log psi_sigma(x)`` makes the
weighted particles exact as ``N`` grows; the last step (``v = 0``) is ``x_0 = x0_hat`` with weight
``p(y | x_0) / psi_sigma(x)``.

Output: weighted particles (or ``resample=True``), log-evidence in the trace. Cost per particle-step:
1 NFE and 1 vector-Jacobian product through the network. The twist's variance is the within-mode
one, so it is over-confident while ``x0 | x_sigma`` is multimodal (measured on separated mixtures in
``docs/benchmarks.md``); exact where its variance is (unit-covariance Gaussian prior, a test).
AFDPS's Tweedie twist fixes that.
"""

from __future__ import annotations

from dataclasses import dataclass

from posterior.samplers.guidance import default_tempering_scale
from posterior.samplers.linear_gaussian import LinearGaussianSVD
from posterior.samplers.settings import NON_NEGATIVE, POSITIVE
from posterior.samplers.twists import TDSTwist, TwistedSampler


@dataclass
class TDS(TwistedSampler):
    """Hyperparameters of TDS (plus those of the SMC core: ``steps``, ``rho``, ``resampling``,
    ``ess_threshold``, ``max_bisections``, ``resample``).

    Parameters
    ----------
    kappa : float
        Weight of the Tweedie variance ``r^2 A A^T`` in the twist (1: PiGDM's; linear-Gaussian only).
    tempering_scale : float, optional
        ``tau_ref`` of the tempered twist for other problems; default: estimated from the likelihood.
    """

    kappa: float = 1.0
    tempering_scale: float | None = None

    limits = {"kappa": NON_NEGATIVE, "tempering_scale": POSITIVE}

    def setup(self, problem, prior):
        if LinearGaussianSVD.applies(problem):
            return TDSTwist(LinearGaussianSVD.of(problem, "TDS"), self.kappa, None)
        return TDSTwist(None, self.kappa, default_tempering_scale(problem, prior, self.tempering_scale))
