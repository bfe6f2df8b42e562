"""Priors: the diffusion denoiser interface, schedules, network adapters, exact analytic priors and
the bundled pretrained priors."""

from posterior.priors.analytic import Gaussian, GaussianMixture
from posterior.priors.base import DenoiserPrior, DiffusionPrior
from posterior.priors.composite import PatchedPrior, SliceStackPrior, StackedPrior, SubspacePrior
from posterior.priors.diffusers_adapter import from_diffusers
from posterior.priors.network import NetworkPrior
from posterior.priors.noise_level import NoiseLevelClassifier
from posterior.priors.pretrained import info, noise_classifier, pretrained, ultrasound_prior
from posterior.priors.schedules import EDMSchedule, Schedule, VESchedule, VPSchedule
from posterior.priors.training import RECIPES, train
from posterior.priors.unet import UNet

__all__ = [
    "RECIPES",
    "DenoiserPrior",
    "DiffusionPrior",
    "EDMSchedule",
    "Gaussian",
    "GaussianMixture",
    "NetworkPrior",
    "NoiseLevelClassifier",
    "PatchedPrior",
    "Schedule",
    "SliceStackPrior",
    "StackedPrior",
    "SubspacePrior",
    "UNet",
    "VESchedule",
    "VPSchedule",
    "from_diffusers",
    "info",
    "noise_classifier",
    "pretrained",
    "train",
    "ultrasound_prior",
]
