"""posterior: Bayesian posterior sampling for inverse problems ``y = A(x) + noise`` with diffusion priors."""

from posterior import diagnostics, distributed, metrics, priors, samplers
from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples

__version__ = "0.1.0"

__all__ = [
    "InverseProblem",
    "PosteriorSamples",
    "__version__",
    "diagnostics",
    "distributed",
    "metrics",
    "priors",
    "samplers",
]
