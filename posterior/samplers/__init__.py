"""Posterior samplers: each a dataclass of hyperparameters with ``sample(problem, prior, num_samples, ...)``."""

from posterior.samplers.afdps import AFDPS
from posterior.samplers.base import Sampler
from posterior.samplers.dlg import DenoisingLangevinGibbs
from posterior.samplers.dps import DPS
from posterior.samplers.exact import ExactPosterior
from posterior.samplers.joint import JointPosterior
from posterior.samplers.lml import LevenbergMarquardtLangevin
from posterior.samplers.mcgdiff import MCGdiff
from posterior.samplers.reddiff import RedDiff
from posterior.samplers.smc import ParticleSampler
from posterior.samplers.tds import TDS

__all__ = [
    "AFDPS",
    "DPS",
    "DenoisingLangevinGibbs",
    "ExactPosterior",
    "JointPosterior",
    "LevenbergMarquardtLangevin",
    "MCGdiff",
    "ParticleSampler",
    "RedDiff",
    "Sampler",
    "TDS",
]
