"""A noise-level classifier: predicts which ``sigma`` on a log-uniform grid produced a noisy image.

Trained on ``x = x0 + sigma_k * eps`` with ``k`` uniform over the grid (cross-entropy), it gives
``p(k | x)`` under a uniform prior on the grid index, i.e. a log-uniform prior on ``sigma``. Denoising
MCMC uses it for the Gibbs draw of ``sigma`` when the prior has no exact noise-level model.

The input is split into its scale and its shape: the network sees ``x / s`` with ``s`` the per-image
RMS, and ``log s`` is appended to the pooled features, so one network covers ``sigma`` from 1e-3
to 1e2 without saturating.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class NoiseLevelClassifier(nn.Module):
    """``(n, C, H, W) -> (n, K)`` logits over the noise levels ``sigmas`` (shape ``(K,)``, ascending).

    Parameters
    ----------
    channels : int
        Image channels.
    sigmas : Tensor, shape (K,)
        The grid, log-uniform and ascending.
    width : int
        Feature channels of the convolutions.
    """

    def __init__(self, channels: int, sigmas: Tensor, width: int = 32):
        super().__init__()
        if sigmas.dim() != 1 or bool((sigmas[1:] <= sigmas[:-1]).any()) or bool((sigmas <= 0).any()):
            raise ValueError("sigmas must be a positive, strictly ascending 1-D tensor")
        self.config = {"channels": channels, "levels": int(sigmas.numel()), "width": width}
        self.register_buffer("sigmas", sigmas.to(torch.float32))
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
            nn.SiLU(),
        )
        self.head = nn.Sequential(nn.Linear(4 * width + 1, 128), nn.SiLU(), nn.Linear(128, sigmas.numel()))

    def forward(self, x: Tensor) -> Tensor:
        rms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-8)
        h = self.features(x / rms)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.pow(2).mean(dim=(2, 3)).sqrt()], dim=1)
        return self.head(torch.cat([pooled, torch.log(rms.reshape(-1, 1))], dim=1))

    def log_probs(self, x: Tensor) -> Tensor:
        """``log p(k | x)`` under a uniform prior on the grid index, shape ``(n, K)``."""
        return F.log_softmax(self(x), dim=1)

    def predict_sigma(self, x: Tensor) -> Tensor:
        """Posterior-mean estimate of ``log sigma``, exponentiated; shape ``(n,)``."""
        p = self.log_probs(x).exp()
        return torch.exp(p @ torch.log(self.sigmas.to(p.dtype)))


def log_uniform_grid(sigma_min: float, sigma_max: float, levels: int) -> Tensor:
    """``levels`` noise levels spaced uniformly in ``log sigma``, ascending, shape ``(levels,)``."""
    return torch.logspace(math.log10(sigma_min), math.log10(sigma_max), levels)
