"""Posterior samplers: each a dataclass of hyperparameters with ``sample(problem, prior, num_samples, ...)``.

Each sampler's update rule is a kernel (:mod:`posterior.samplers.kernel`: a state and a pure step)
that :meth:`Sampler.sample` drives; the maths several of them share lives in
:mod:`~posterior.samplers.guidance`, :mod:`~posterior.samplers.linear_gaussian`,
:mod:`~posterior.samplers.langevin`, :mod:`~posterior.samplers.resampling` and
:mod:`posterior.priors.integrators`.
"""

from posterior.samplers.afdps import AFDPS
from posterior.samplers.base import Sampler
from posterior.samplers.dds import DDS
from posterior.samplers.diffusion_mbir import DiffusionMBIR
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
    "DDS",
    "DPS",
    "DenoisingLangevinGibbs",
    "DiffusionMBIR",
    "ExactPosterior",
    "JointPosterior",
    "LevenbergMarquardtLangevin",
    "MCGdiff",
    "ParticleSampler",
    "RedDiff",
    "Sampler",
    "TDS",
]
