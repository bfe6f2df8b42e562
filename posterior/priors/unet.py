"""A compact UNet for EDM-preconditioned denoising (Karras et al. 2022, arXiv:2206.00364, Table 1).

The network is the raw ``F`` of EDM: the denoiser is
``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with ``c_noise = log(sigma) / 4``, which
``NetworkPrior(net, parametrization="edm", schedule=EDMSchedule(...))`` applies, so the
preconditioning lives in one place. ``F`` has residual blocks with group normalisation, SiLU and a
FiLM (scale and shift) noise embedding, average-pool downsampling and nearest-neighbour upsampling
with skip connections, and no attention: a few hundred thousand to a few million parameters, the
network behind the bundled priors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class FourierEmbedding(nn.Module):
    """Random Fourier features of the scalar ``c_noise``: ``(n,) -> (n, dim)`` (fixed frequencies)."""

    def __init__(self, dim: int, scale: float = 4.0):
        super().__init__()
        self.register_buffer(
            "freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale
        )

    def forward(self, c_noise: Tensor) -> Tensor:
        angle = 2 * math.pi * c_noise[:, None] * self.freqs[None].to(c_noise.dtype)
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)


class ResBlock(nn.Module):
    """``x + conv(silu(film(norm(conv(silu(norm(x)))))))`` with a 1x1 skip when channels change."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class UNet(nn.Module):
    """The raw network ``F(z, c_noise)``: ``(n, C, H, W), (n,) -> (n, C, H, W)``.

    Parameters
    ----------
    channels : int
        Image channels ``C``.
    widths : sequence of int
        Feature channels per resolution level; ``H`` and ``W`` must be divisible by
        ``2^(len(widths) - 1)``.
    blocks : int
        Residual blocks per level on the way down (one more on the way up).
    emb_dim : int
        Width of the noise embedding.
    """

    def __init__(
        self, channels: int = 1, widths: Sequence[int] = (32, 64, 64), blocks: int = 1, emb_dim: int = 128
    ):
        super().__init__()
        self.config = {"channels": channels, "widths": list(widths), "blocks": blocks, "emb_dim": emb_dim}
        self.embed = nn.Sequential(
            FourierEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        skip_widths, c = [widths[0]], widths[0]
        for level, w in enumerate(widths):
            for _ in range(blocks):
                self.down.append(ResBlock(c, w, emb_dim))
                c = w
                skip_widths.append(c)
            if level < len(widths) - 1:
                self.down.append(nn.AvgPool2d(2))
                skip_widths.append(c)
        self.middle = ResBlock(c, c, emb_dim)
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(c + skip_widths.pop(), w, emb_dim))
                c = w
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.head = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, z: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise.to(z.dtype))
        h = self.stem(z)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            skips.append(h)
        h = self.middle(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, ResBlock) else layer(h)
        return self.head(h)


class GaussianResidualUNet(UNet):
    """A :class:`UNet` beside the exact denoiser of a Gaussian ``N(m, U diag(lambda) U^T)`` fitted to the data.

    With the ``"edm-gaussian"`` parametrisation of :class:`~posterior.priors.network.NetworkPrior` the
    network learns the residual of :meth:`gaussian_denoise`. Buffers (saved with the weights):
    ``data_mean`` of shape ``event_shape``, ``data_eigvecs`` ``(d, d)``, ``data_eigvals`` ``(d,)``.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        widths: Sequence[int] = (32, 64, 64),
        blocks: int = 1,
        emb_dim: int = 128,
    ):
        super().__init__(event_shape[0], widths, blocks, emb_dim)
        d = math.prod(event_shape)
        self.config["gaussian_residual"] = list(event_shape)
        self.register_buffer("data_mean", torch.zeros(*event_shape))
        self.register_buffer("data_eigvecs", torch.eye(d))
        self.register_buffer("data_eigvals", torch.ones(d))

    def fit_gaussian(self, x0: Tensor, jitter: float = 1e-6) -> None:
        """Set the Gaussian to the sample mean and covariance (plus ``jitter I``) of ``x0``, ``(n, *event_shape)``."""
        flat = x0.reshape(x0.shape[0], -1).double()
        cov = torch.cov(flat.T) + jitter * torch.eye(flat.shape[1], dtype=torch.float64, device=flat.device)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        self.data_mean.copy_(flat.mean(0).reshape(self.data_mean.shape))
        self.data_eigvecs.copy_(eigvecs)
        self.data_eigvals.copy_(eigvals.clamp(min=jitter))

    def gaussian_denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """``E[x0 | x]`` under the fitted Gaussian: ``m + U diag(lambda / (lambda + sigma^2)) U^T (x - m)``.

        ``x`` of shape ``(n, *event_shape)``, ``sigma`` broadcastable to ``(n, 1, 1, 1)``.
        """
        n = x.shape[0]
        coeffs = (x - self.data_mean).reshape(n, -1) @ self.data_eigvecs
        shrink = self.data_eigvals / (self.data_eigvals + sigma.reshape(-1, 1) ** 2)
        return self.data_mean + ((coeffs * shrink) @ self.data_eigvecs.T).reshape(x.shape)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
