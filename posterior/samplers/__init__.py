"""Posterior samplers: each a dataclass of hyperparameters with ``sample(problem, prior, num_samples, ...)``."""

from posterior.samplers.base import Sampler
from posterior.samplers.dps import DPS
from posterior.samplers.reddiff import RedDiff

__all__ = ["DPS", "RedDiff", "Sampler"]
