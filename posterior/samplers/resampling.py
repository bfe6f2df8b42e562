"""Weights and draws from them: effective sample size, the mean of weights in log space, resampling
schemes and categorical draws, all by the inverse CDF of the normalised weights."""

from __future__ import annotations

import math

import torch
from torch import Tensor

RESAMPLING = ("systematic", "stratified", "multinomial", "residual")


def ess(log_weights: Tensor) -> Tensor:
    """Effective sample size ``1 / sum_i W_i^2`` of each run: ``(B, N) -> (B,)``."""
    w = torch.softmax(log_weights, dim=-1)
    return 1.0 / (w**2).sum(-1)


def log_mean_exp(log_weights: Tensor) -> Tensor:
    """``log(mean_i exp(log_w_i))`` of each run: ``(B, N) -> (B,)``."""
    return torch.logsumexp(log_weights, dim=-1) - math.log(log_weights.shape[-1])


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """For each row of ``probs`` (``(B, N)``, rows summing to 1) the indices ``i`` with
    ``cdf_{i-1} <= u < cdf_i`` of the uniforms ``u`` (``(B, M)``): shape ``(B, M)``."""
    cdf = torch.cumsum(probs, dim=-1)
    cdf[:, -1] = 1.0  # round-off must not push u past the last index
    return torch.searchsorted(cdf, u).clamp(max=probs.shape[-1] - 1)


def uniforms(shape: tuple[int, ...], generator: torch.Generator | None, device) -> Tensor:
    """Float64 uniforms drawn on the generator's device and moved to ``device``."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=source).to(device)


def draw_categorical(logits: Tensor, generator) -> Tensor:
    """One draw per row from ``softmax(logits)`` by inverse CDF with the generator's uniforms: ``(n, G) -> (n,)``."""
    probs = torch.softmax(logits.double(), dim=-1)
    return inverse_cdf(probs, uniforms((logits.shape[0], 1), generator, probs.device))[:, 0]


def resample_indices(log_weights: Tensor, scheme: str, generator: torch.Generator | None) -> Tensor:
    """Ancestor indices ``(B, N)`` (within each run) drawn according to the normalised weights.

    ``systematic``: one uniform per run, ``u_i = (U + i) / N``; ``stratified``: ``u_i = (U_i + i) / N``;
    ``multinomial``: ``N`` independent draws; ``residual``: ``floor(N W_i)`` copies of each particle,
    the remaining ``R`` drawn multinomially from the residual weights. All are unbiased.
    """
    B, N = log_weights.shape
    W = torch.softmax(log_weights.double(), dim=-1)
    device = W.device
    if scheme in ("systematic", "stratified"):
        offsets = uniforms((B, 1) if scheme == "systematic" else (B, N), generator, device)
        return inverse_cdf(W, (offsets + torch.arange(N, dtype=torch.float64, device=device)) / N)
    if scheme == "multinomial":
        return torch.multinomial(W.cpu(), N, replacement=True, generator=_cpu(generator)).to(device)
    if scheme == "residual":
        copies = torch.floor(N * W)
        remaining = N - copies.sum(-1)  # (B,)
        residual = N * W - copies
        has_rest = remaining > 0
        residual[~has_rest] = 1.0  # placeholder rows, their draws are discarded
        draws = torch.multinomial(residual.cpu(), N, replacement=True, generator=_cpu(generator)).to(device)
        keep = torch.arange(N, device=device) < remaining[:, None]
        copies = copies + torch.zeros_like(W).scatter_add_(1, draws, keep.double())
        flat = torch.repeat_interleave(torch.arange(B * N, device=device), copies.reshape(-1).long())
        return (flat % N).reshape(B, N)
    raise ValueError(f"resampling must be one of {RESAMPLING}, got {scheme!r}")


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """``torch.multinomial`` on CPU weights needs a CPU generator; a CUDA one is reseeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)
