"""Figures of a posterior and of its diagnostics, and a one-call run report.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global state,
no display needed); save it with ``fig.savefig(path)``. Image-shaped events (``(H, W)``, ``(1, H, W)``,
``(3, H, W)``) are drawn as images, others as one value per coordinate.

- :func:`sample_grid`: draws (resampled by their weights for SMC results);
- :func:`summary_maps`: posterior mean, per-pixel std, central credible-interval width, error to a truth;
- :func:`convergence_maps`: R-hat and bulk/tail ESS per pixel (from :func:`posterior.diagnostics.convergence`);
- :func:`ess_trace`: ESS/N of each SMC run along the noise levels;
- :func:`rank_plots` and :func:`coverage_curve`: a :class:`~posterior.diagnostics.CalibrationReport`'s
  rank histograms, ECDF-difference bands and coverage curves;
- :func:`write_report`: all that applies to a result, as PNGs, a Markdown page and the saved result.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from posterior import diagnostics
from posterior.results import PosteriorSamples


def _is_image(shape) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def _show(ax, value: Tensor, title: str, cmap: str = "gray", **kwargs) -> None:
    """An image (image-shaped ``value``) or one bar per coordinate, titled, with a colour bar for maps."""
    value = value.detach().double().cpu()
    ax.set_title(title, fontsize=9)
    if _is_image(value.shape):
        picture = value.permute(1, 2, 0) if value.dim() == 3 else value
        picture = picture[..., 0] if picture.dim() == 3 and picture.shape[-1] == 1 else picture
        shown = ax.imshow(picture.numpy(), cmap=cmap, **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])
        if picture.dim() == 2 and cmap != "gray":
            ax.figure.colorbar(shown, ax=ax, fraction=0.046)
    else:
        ax.bar(np.arange(value.numel()), value.reshape(-1).numpy())
        ax.set_xlabel("coordinate", fontsize=8)


def _draws(result: PosteriorSamples, n: int, seed: int = 0) -> Tensor:
    """``n`` draws ``(n, *event_shape)``: resampled by the normalised weights of weighted results."""
    flat = result.samples.reshape(-1, *result.event_shape)
    weighted = result.log_weights is not None  # with replacement: few particles may carry the weight
    generator = torch.Generator().manual_seed(seed)
    index = torch.multinomial(
        result.weights().double().cpu(), min(n, flat.shape[0]), weighted, generator=generator
    )
    return flat[index.to(flat.device)]


def sample_grid(result: PosteriorSamples, n: int = 16, columns: int = 8) -> Figure:
    """A grid of ``n`` draws on a shared grey scale (the 1st to 99th percentile of the draws)."""
    draws = _draws(result, n).double().cpu()
    low, high = np.quantile(draws.numpy(), [0.01, 0.99])
    rows = -(-draws.shape[0] // columns)
    fig = Figure(figsize=(1.3 * columns, 1.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < draws.shape[0]:
            _show(ax, draws[k], f"draw {k}", vmin=low, vmax=high)
        else:
            ax.axis("off")
    fig.suptitle(f"{result.sampler or 'posterior'} draws", fontsize=10)
    return fig


def summary_maps(result: PosteriorSamples, truth: Tensor | None = None, level: float = 0.9) -> Figure:
    """Posterior mean, per-pixel std, width of the central ``level`` interval and, given ``truth``
    (shape ``event_shape``), the absolute error of the mean."""
    half = (1 - level) / 2
    panels = [
        (result.mean(), "posterior mean", "gray"),
        (result.std(), "per-pixel std", "magma"),
        (result.quantile(1 - half) - result.quantile(half), f"{int(100 * level)}% interval width", "magma"),
    ]
    if truth is not None:
        panels = (
            [(truth, "truth", "gray")] + panels + [((result.mean() - truth).abs(), "|mean - truth|", "magma")]
        )
    fig = Figure(figsize=(3 * len(panels), 3), layout="constrained")
    for ax, (value, title, cmap) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        _show(ax, value, title, cmap)
    return fig


def convergence_maps(report) -> Figure:
    """R-hat, bulk ESS and tail ESS per pixel of a :class:`~posterior.diagnostics.ConvergenceReport`."""
    panels = [
        (report.rhat, f"R-hat (max {report.rhat_max:.3f})"),
        (report.ess_bulk, f"bulk ESS (min {report.ess_bulk_min:.0f})"),
        (report.ess_tail, f"tail ESS (min {report.ess_tail_min:.0f})"),
    ]
    fig = Figure(figsize=(9.5, 3), layout="constrained")
    for ax, (value, title) in zip(fig.subplots(1, 3), panels, strict=True):
        _show(ax, value, title, "viridis")
    return fig


def ess_trace(result: PosteriorSamples) -> Figure:
    """ESS/N of every SMC run against sigma (descending), resampling steps marked."""
    trace = result.trace
    if "ess" not in trace:
        raise ValueError("the result has no ESS trace (not an SMC result)")
    ess = trace["ess"].double()  # ESS / N, (steps, runs)
    sigma = trace["sigma"].double()[: ess.shape[0]]
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(sigma.numpy(), ess.numpy(), lw=1)
    if "resampled" in trace:
        steps, runs = torch.nonzero(trace["resampled"], as_tuple=True)
        ax.plot(sigma[steps].numpy(), ess[steps, runs].numpy(), "k.", ms=3, label="resampled")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("sigma")
    ax.set_ylabel("ESS / N")
    ax.set_title(f"{result.sampler}: {result.chains} runs of {result.draws} particles", fontsize=9)
    return fig


def rank_plots(report, coordinates: int = 3, bins: int = 10) -> Figure:
    """Rank histograms of the first ``coordinates`` coordinates (with the +-2 s.d. binomial range of a
    uniform histogram), and the ECDF minus the identity, with its simultaneous 95% band, for the
    coordinate ranks, the HPD ranks and TARP."""
    ranks = report.ranks.reshape(report.ranks.shape[0], -1)
    m = min(coordinates, ranks.shape[1])
    n = ranks.shape[0]
    fig = Figure(figsize=(3 * (m + 3), 2.8), layout="constrained")
    axes = fig.subplots(1, m + 3)
    expected, spread = n / bins, 2 * (n / bins * (1 - 1 / bins)) ** 0.5
    for j in range(m):
        axes[j].hist(ranks[:, j].numpy(), bins=bins, range=(0, 1), color="C0")
        axes[j].axhspan(expected - spread, expected + spread, color="0.85", zorder=0)
        axes[j].set_title(f"SBC ranks, coordinate {j}", fontsize=9)
    for ax, which, title in zip(
        axes[m:], ("ranks", "hpd", "tarp"), ("SBC ranks", "HPD ranks", "TARP"), strict=True
    ):
        band = report.ecdf(which)
        ax.fill_between(band["z"], band["lower"] - band["z"], band["upper"] - band["z"], color="0.85")
        ax.plot(band["z"], (band["F"] - band["z"]).T, lw=0.8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{title}: ECDF - z, 95% band", fontsize=9)
    return fig


def coverage_curve(report) -> Figure:
    """Empirical against nominal coverage of central intervals and HPD regions, 0 to 1, with the
    +-2 standard-error range of a calibrated sampler."""
    levels = np.linspace(0.01, 0.99, 99)
    ranks = report.ranks.reshape(report.ranks.shape[0], -1).double()
    central = [float(((ranks - 0.5).abs() <= a / 2).double().mean()) for a in levels]
    hpd = [float((report.hpd_ranks < a).double().mean()) for a in levels]
    se = 2 * np.sqrt(levels * (1 - levels) / ranks.shape[0])
    fig = Figure(figsize=(4, 4), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(levels, levels - se, levels + se, color="0.85", label="calibrated +-2 s.e.")
    ax.plot(levels, central, label="central intervals")
    ax.plot(levels, hpd, label=f"HPD regions ({report.hpd_method})")
    ax.plot([0, 1], [0, 1], "k", lw=0.5)
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage")
    ax.legend(fontsize=8)
    return fig


def write_report(
    result: PosteriorSamples,
    directory: str | os.PathLike,
    *,
    truth: Tensor | None = None,
    calibration=None,
    title: str | None = None,
) -> Path:
    """Save ``result`` and every figure that applies to it in ``directory``, with a Markdown page.

    Writes ``samples.safetensors`` (:meth:`PosteriorSamples.save`), ``summary.csv``
    (:meth:`PosteriorSamples.summary` at level 0.9), ``draws.png`` and ``summary.png``,
    ``convergence.png`` for Markov chains (``kind="mcmc"``, 2+ chains of 4+ draws), ``smc_ess.png`` for SMC results,
    ``ranks.png`` and ``coverage.png`` given a :class:`~posterior.diagnostics.CalibrationReport`, and
    ``report.md`` tying them together. Returns the path of ``report.md``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    result.save(directory / "samples.safetensors")
    result.summary(level=0.9).to_csv(directory / "summary.csv")
    weighted = result.log_weights is not None
    lines = [
        f"# {title or (result.sampler or 'Posterior') + ' run report'}",
        "",
        f"- sampler: `{result.sampler}` ({result.kind}), {result.chains} chains x {result.draws} draws of "
        f"shape {tuple(result.event_shape)}",
        f"- cost: {result.nfe} network evaluations and {result.grad_evals} VJPs per draw, {result.wall_time:.1f} s",
        "- saved result: `samples.safetensors` (`posterior.PosteriorSamples.load`)",
        "- per-coordinate table: `summary.csv` (mean, sd, central 90% interval, "
        + (
            "Monte-Carlo standard error from the independent runs and the runs' agreement: "
            "`PosteriorSamples.summary`)"
            if weighted
            else "ESS, R-hat and MCSE: ArviZ's summary)"
        ),
        "",
    ]
    if result.verdict is not None:
        lines += ["## Verdict", "", "```", str(result.verdict), "```", ""]
    figures = {"draws": sample_grid(result), "summary": summary_maps(result, truth)}
    if result.kind == "mcmc" and result.chains >= 2 and result.draws >= 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", diagnostics.ConvergenceWarning)
            report = diagnostics.convergence(result)
        figures["convergence"] = convergence_maps(report)
        lines += ["## Convergence", "", "```", str(report), "```", ""]
    if result.log_weights is not None:
        health = diagnostics.weights(result)
        lines += [
            "## Importance weights",
            "",
            f"- final ESS/N per run: {[round(float(v), 3) for v in health['final_ess_fraction']]}",
            f"- largest normalised weight per run: {[round(float(v), 3) for v in health['max_weight']]}",
            "",
        ]
        if "ess" in result.trace:
            figures["smc_ess"] = ess_trace(result)
    if calibration is not None:
        figures["ranks"] = rank_plots(calibration)
        figures["coverage"] = coverage_curve(calibration)
        lines += ["## Calibration", "", str(calibration), ""]
    lines += ["## Figures", ""]
    for name, fig in figures.items():
        fig.savefig(directory / f"{name}.png", dpi=110)
        lines += [f"![{name}]({name}.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
