"""Priors: the diffusion denoiser interface, schedules, network adapters and exact analytic priors."""

from posterior.priors.analytic import Gaussian, GaussianMixture
from posterior.priors.base import DenoiserPrior, DiffusionPrior
from posterior.priors.network import NetworkPrior
from posterior.priors.schedules import EDMSchedule, Schedule, VESchedule, VPSchedule

__all__ = [
    "DenoiserPrior",
    "DiffusionPrior",
    "EDMSchedule",
    "Gaussian",
    "GaussianMixture",
    "NetworkPrior",
    "Schedule",
    "VESchedule",
    "VPSchedule",
]
