"""Figures of a posterior and of its diagnostics, and a one-call run report.

Every function returns a :class:`Figure`, a :class:`matplotlib.figure.Figure` built without ``pyplot``
(no global state, no display needed) that Jupyter shows inline (``_repr_png_``); save it with
``fig.savefig(path)`` (PNG, SVG, PDF). Image-shaped events (``(H, W)``, ``(1, H, W)``,
``(3, H, W)``) are drawn as images, others as one value per coordinate.

- :func:`sample_grid`: draws (resampled by their weights for SMC results);
- :func:`summary_maps`: the measurement (:func:`measurement_view`), the classical reconstruction where
  the operator has one (:func:`baseline`), truth and posterior mean on one scale, per-pixel std, central
  credible-interval width, error to a truth, with PSNR, SSIM and coverage (:func:`scores`);
- :func:`convergence_maps`: R-hat and bulk/tail ESS per pixel (from :func:`posterior.diagnostics.convergence`);
- :func:`ess_trace`: ESS/N of the SMC runs (median and range) along the noise levels;
- :func:`parameter_posterior`: the posterior of the forward model's unknown parameters
  (:func:`posterior.sample_with_parameters`), each against its true value where known;
- :func:`rank_plots` and :func:`coverage_curve`: a :class:`~posterior.diagnostics.CalibrationReport`'s
  rank histograms, ECDF-difference bands and coverage curves;
- :func:`write_report`: all that applies to a result, as PNGs, a Markdown page recording the configuration
  and the numbers, a CSV table and the saved result.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import matplotlib
import matplotlib.figure
import numpy as np
import torch
from torch import Tensor

from operators import MRI, LinearOperator, Radon
from posterior import diagnostics, metrics
from posterior.results import PosteriorSamples


class Figure(matplotlib.figure.Figure):
    """A matplotlib figure that renders inline in Jupyter and IPython (as PNG), without ``pyplot``."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def _is_image(shape) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def _show(ax, value: Tensor, title: str, cmap="gray", colorbar: bool = False, **kwargs) -> None:
    """An image (image-shaped ``value``, NaN drawn in the colour map's "bad" colour) or one bar per
    coordinate, titled; ``kwargs`` (e.g. ``vmin``, ``vmax``) go to ``imshow``."""
    value = value.detach().double().cpu()
    ax.set_title(title, fontsize=9)
    if _is_image(value.shape):
        picture = value.permute(1, 2, 0) if value.dim() == 3 else value
        picture = picture[..., 0] if picture.dim() == 3 and picture.shape[-1] == 1 else picture
        shown = ax.imshow(picture.numpy(), cmap=cmap, **kwargs)
        ax.set_xticks([])
        ax.set_yticks([])
        if colorbar and picture.dim() == 2:
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


def measurement_view(problem) -> tuple[Tensor, str]:
    """The measurement ``y`` of ``problem`` (an :class:`~posterior.InverseProblem`; the first of a
    batch) as a reader would look at it, and a title.

    Image-shaped ``y`` as it is (the blurred or low-resolution image, the sinogram), with the pixels
    that an operator's ``mask`` of ``y``'s shape hides set to NaN (inpainting); MRI k-space
    ``(C, H, W, 2)`` as its centred log-magnitude, root-sum-of-squares over coils, shape ``(H, W)``;
    any other ``y`` of a linear operator as the adjoint ``A^T y``, shape ``in_shape``; else ``y``.
    """
    operator, y = problem.operator, problem.y[0] if problem.batched else problem.y
    mask = getattr(operator, "mask", None)
    if _is_image(y.shape):
        if isinstance(mask, Tensor) and mask.shape == y.shape:
            return y.double().masked_fill(
                ~mask.bool().to(y.device), float("nan")
            ), "measurement y (blue: hidden)"
        return y, "measurement y"
    if isinstance(operator, MRI):
        magnitude = y.double().square().sum(dim=(0, -1)).sqrt()  # (H, W)
        return torch.fft.fftshift(magnitude).log1p(), "log(1 + |k-space|), centred"
    if isinstance(operator, LinearOperator):
        return operator.adjoint(y[None])[0], "A^T y (adjoint of the measurement)"
    return y, "measurement y"


def baseline(problem) -> tuple[Tensor, str] | None:
    """The classical reconstruction of ``problem``'s measurement (the first of a batch) where its
    operator has one, and its name: filtered back-projection (:meth:`operators.Radon.fbp`) for CT, the
    pseudo-inverse ``A^+ y`` (:meth:`operators.MRI.pinv`, the zero-filled inverse FFT up to k-space
    symmetry) for MRI; None for other operators.

    Returns
    -------
    (Tensor, shape ``operator.in_shape``, on the CPU; str) or None
    """
    if problem is None:
        return None
    operator, y = problem.operator, problem.y[0] if problem.batched else problem.y
    with torch.no_grad():
        if isinstance(operator, Radon):
            return operator.fbp(y[None])[0].cpu(), "FBP"
        if isinstance(operator, MRI):
            return operator.pinv(y[None])[0].cpu(), "pseudo-inverse"
    return None


def _image_scores(estimate: Tensor, truth: Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM of an image ``estimate`` against ``truth``, with the truth's range (max - min)
    as ``data_range``."""
    estimate = estimate.detach().double().cpu()
    data_range = float(truth.max() - truth.min()) or 1.0
    window = min(11, *truth.shape[-2:])
    window -= 1 - window % 2  # odd, at most the image size
    return {
        "data_range": data_range,
        "psnr": metrics.psnr(estimate, truth, data_range),
        "ssim": metrics.ssim(estimate, truth, data_range, window=window),
    }


def scores(
    result: PosteriorSamples, truth: Tensor, level: float = 0.9, reference: Tensor | None = None
) -> dict[str, float]:
    """How the posterior fits ``truth`` (shape ``event_shape``): ``coverage``, the fraction of
    coordinates inside the central ``level`` interval (:meth:`PosteriorSamples.interval`), with
    ``covered`` and ``coordinates`` its counts; for images also ``psnr`` (dB) and ``ssim`` of the
    posterior mean, with the truth's range (max - min) as ``data_range``, and given a ``reference``
    reconstruction (shape ``event_shape``, e.g. :func:`baseline`'s) its ``baseline_psnr`` and
    ``baseline_ssim`` on the same range."""
    truth = truth.detach().double().cpu()
    lower, upper = (bound.detach().double().cpu() for bound in result.interval(level))
    covered = int(((lower <= truth) & (truth <= upper)).sum())
    out = {"covered": covered, "coordinates": truth.numel(), "coverage": covered / truth.numel()}
    if _is_image(truth.shape):
        out.update(_image_scores(result.mean(), truth))
        if reference is not None:
            found = _image_scores(reference, truth)
            out.update(baseline_psnr=found["psnr"], baseline_ssim=found["ssim"])
    return out


def _headline(result: PosteriorSamples, found: dict | None, level: float, name: str = "baseline") -> str:
    """One line of numbers: PSNR, SSIM (and those of the ``name`` baseline) and coverage (given
    ``found``, :func:`scores`), then the cost."""
    parts = []
    if found is not None and "psnr" in found:
        parts.append(f"PSNR {found['psnr']:.2f} dB, SSIM {found['ssim']:.3f}")
    if found is not None and "baseline_psnr" in found:
        parts.append(f"{name} PSNR {found['baseline_psnr']:.2f} dB, SSIM {found['baseline_ssim']:.3f}")
    if found is not None:
        parts.append(
            f"central {int(round(100 * level))}% interval covers {100 * found['coverage']:.1f}% of the truth"
        )
    parts.append(f"{result.nfe} NFE + {result.grad_evals} VJP per draw, {result.wall_time:.1f} s")
    return "; ".join(parts)


def summary_maps(
    result: PosteriorSamples, truth: Tensor | None = None, level: float = 0.9, problem=None
) -> Figure:
    """The measurement (given ``problem``: :func:`measurement_view`; on its own scale when its values lie
    outside the others'), the classical reconstruction where the operator has one (:func:`baseline`),
    the truth (given ``truth``, shape ``event_shape``) and the posterior mean on one grey scale, then
    the per-pixel std, the width of the
    central ``level`` interval and ``|mean - truth|`` (without a truth: the data fit ``|y - A(mean)|`` of
    an image-shaped ``y``), each with its colour bar; PSNR and SSIM of the mean and of the baseline,
    the coverage of the truth (:func:`scores`), NFE and time in the title."""
    mean = result.mean()
    lower, upper = result.interval(level)
    reference = baseline(problem)
    shared = [mean] if truth is None else [truth, mean]
    low = min(float(v.min()) for v in shared)
    high = max(float(v.max()) for v in shared)
    gray = {"cmap": "gray", "vmin": low, "vmax": high}
    panels = []  # (value, title, imshow keywords)
    if problem is not None:
        view, title = measurement_view(problem)
        seen = view[torch.isfinite(view)].double()
        span = high - low  # the truth's grey scale, if y is in its units (not counts, not a sinogram)
        same = tuple(view.shape) == tuple(result.event_shape) and (
            seen.numel() == 0 or (float(seen.min()) >= low - span and float(seen.max()) <= high + span)
        )
        cmap = matplotlib.colormaps["gray"].with_extremes(bad="tab:blue")
        panels.append((view, title, dict(gray, cmap=cmap) if same else {"cmap": cmap}))
    if reference is not None:  # on the truth's grey scale: its artefacts beyond it are clipped
        panels.append((reference[0], reference[1], gray))
    if truth is not None:
        panels.append((truth, "truth", gray))
    panels += [
        (mean, "posterior mean", gray),
        (result.std(), "per-pixel std", {"cmap": "magma"}),
        (upper - lower, f"central {int(round(100 * level))}% interval width", {"cmap": "magma"}),
    ]
    if truth is not None:
        panels.append(((mean - truth.to(mean.device)).abs(), "|mean - truth|", {"cmap": "magma"}))
    elif problem is not None and _is_image(problem.operator.out_shape):  # no truth: the data fit
        y = problem.y[0] if problem.batched else problem.y
        with torch.no_grad():
            fit = problem.operator(mean[None].to(device=y.device, dtype=y.dtype))[0]
        panels.append(((y - fit).abs().cpu(), "|y - A(mean)| (data fit)", {"cmap": "magma"}))
    fig = Figure(figsize=(2.9 * len(panels), 3.3), layout="constrained")
    for ax, (value, title, keywords) in zip(
        fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True
    ):
        _show(ax, value, title, colorbar=True, **keywords)
    found = None if truth is None else scores(result, truth, level, reference and reference[0])
    headline = _headline(result, found, level, reference[1] if reference else "baseline")
    fig.suptitle(f"{result.sampler or 'posterior'}: {headline}", fontsize=9)
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
        _show(ax, value, title, "viridis", colorbar=True)
    return fig


def parameter_posterior(result: PosteriorSamples, truth: dict | None = None, draws: int = 2000) -> Figure:
    """The posterior of each scalar unknown parameter (:attr:`PosteriorSamples.params`) as a weighted
    histogram, and for two or more a scatter of ``draws`` draws of the first two (resampled by the
    weights), with the values of ``truth`` (``{name: value}``) marked."""
    names = [k for k, v in result.params.items() if v.dim() == 2]
    if not names:
        raise ValueError("the result has no scalar unknown parameters (result.params)")
    truth = truth or {}
    weights = result.weights().double().cpu().numpy()
    values = {k: result.params[k].reshape(-1).double().cpu().numpy() for k in names}
    panels = len(names) + (len(names) >= 2)
    fig = Figure(figsize=(3.2 * panels, 2.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        ax.hist(values[name], bins=30, weights=weights, color="tab:blue", alpha=0.8)
        if name in truth:
            ax.axvline(float(truth[name]), color="tab:red", label="true value")
            ax.legend(fontsize=8)
        ax.set_xlabel(name)
        ax.set_yticks([])
    if len(names) >= 2:
        generator = torch.Generator().manual_seed(0)
        index = torch.multinomial(torch.from_numpy(weights), draws, True, generator=generator).numpy()
        first, second = names[:2]
        ax = axes[-1]
        ax.scatter(values[first][index], values[second][index], s=4, alpha=0.3, color="tab:blue")
        if first in truth and second in truth:
            ax.scatter([float(truth[first])], [float(truth[second])], marker="x", s=60, color="tab:red")
        ax.set_xlabel(first)
        ax.set_ylabel(second)
    fig.suptitle(f"{result.sampler or 'posterior'}: unknown parameters", fontsize=10)
    return fig


def ess_trace(result: PosteriorSamples) -> Figure:
    """ESS/N of the SMC runs against sigma (descending): the median and the range over the runs, and
    a tick on top at each step where a run resampled (longer the more runs did)."""
    trace = result.trace
    if "ess" not in trace:
        raise ValueError("the result has no ESS trace (not an SMC result)")
    ess = trace["ess"].double().cpu().reshape(trace["ess"].shape[0], -1)  # ESS / N, (steps, runs)
    sigma = trace["sigma"].double().cpu()[: ess.shape[0]].numpy()
    runs = ess.shape[1]
    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(
        sigma,
        ess.min(1).values.numpy(),
        ess.max(1).values.numpy(),
        color="C0",
        alpha=0.25,
        lw=0,
        label=f"range over {runs} runs",
    )
    ax.plot(sigma, ess.quantile(0.5, dim=1).numpy(), color="C0", lw=1.2, label="median")
    if "resampled" in trace:
        share = trace["resampled"].double().cpu().reshape(ess.shape[0], -1).mean(1)  # (steps,)
        at = (share > 0).numpy()
        total = int(trace["resampled"].sum())
        ax.vlines(
            sigma[at],
            1.02,
            1.02 + 0.06 * share.numpy()[at],
            color="k",
            lw=0.8,
            label=f"resampling ({total} in all)",
        )
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("sigma")
    ax.set_ylabel("ESS / N")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"{result.sampler}: {runs} runs of {result.draws} particles", fontsize=9)
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


def _describe_prior(prior) -> str:
    if prior is None or isinstance(prior, str):
        return prior or "not recorded"
    shape, low, high = (getattr(prior, k, None) for k in ("event_shape", "sigma_min", "sigma_max"))
    return f"{type(prior).__name__}, event shape {tuple(shape)}, sigma in [{low:.3g}, {high:.3g}]"


def _configuration(result: PosteriorSamples, problem, prior, seed) -> list[str]:
    """The lines of ``report.md`` that say what ran: operator, noise, prior, sampler, seed, versions."""
    import posterior

    lines = []
    if problem is not None:
        mask = getattr(problem.operator, "mask", None)
        unit = "k-space samples" if isinstance(problem.operator, MRI) else "pixels"
        seen = f"; observes {int(mask.sum())} of {mask.numel()} {unit}" if isinstance(mask, Tensor) else ""
        lines += [f"- operator: `{problem.operator!r}`{seen}", f"- noise: `{problem.noise!r}`"]
    settings = ", ".join(f"{k}={v!r}" for k, v in result.config.items()) or "not recorded"
    return lines + [
        f"- prior: {_describe_prior(prior)}",
        f"- sampler: `{result.sampler}` ({result.kind}), settings `{settings}`",
        f"- draws: {result.chains} chains x {result.draws} draws of shape {tuple(result.event_shape)}",
        f"- seed: {seed if seed is not None else 'not recorded'}",
        f"- versions: posterior {posterior.__version__}, torch {torch.__version__}",
    ]


def write_report(
    result: PosteriorSamples,
    directory: str | os.PathLike,
    *,
    truth: Tensor | None = None,
    calibration=None,
    title: str | None = None,
    problem=None,
    prior=None,
    seed: int | None = None,
    level: float = 0.9,
) -> Path:
    """Save ``result`` and every figure that applies to it in ``directory``, with a Markdown page.

    Writes ``samples.safetensors`` (:meth:`PosteriorSamples.save`), ``summary.csv``
    (:meth:`PosteriorSamples.summary` at ``level``), ``summary.png`` (:func:`summary_maps`, with the
    measurement given ``problem``), ``draws.png``, ``convergence.png`` for Markov chains
    (``kind="mcmc"``, 2+ chains of 4+ draws), ``smc_ess.png`` for SMC results, ``ranks.png`` and
    ``coverage.png`` given a :class:`~posterior.diagnostics.CalibrationReport`, and ``report.md``: the
    configuration (operator and noise of ``problem``, ``prior`` (a name or the prior), the sampler's
    settings, ``seed``, versions), PSNR, SSIM and coverage given ``truth`` (shape ``event_shape``,
    :func:`scores`), with the PSNR and SSIM of the classical reconstruction where the operator of
    ``problem`` has one (:func:`baseline`: FBP for CT), the cost, and a link to every file. One
    interval ``level`` throughout. Returns the path of ``report.md``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    percent = f"central {int(round(100 * level))}% interval"
    if title is None and problem is not None:
        shape = "x".join(str(n) for n in result.event_shape)
        title = f"{result.sampler}: {type(problem.operator).__name__} of a {shape} image, {problem.noise!r}"
        title += f", {prior} prior" if isinstance(prior, str) else ""
    weighted = result.log_weights is not None
    lines = [f"# {title or (result.sampler or 'Posterior') + ' run report'}", "", "## Configuration", ""]
    lines += _configuration(result, problem, prior, seed) + ["", "## Results", ""]
    reference = baseline(problem)
    if truth is not None:
        found = scores(result, truth, level, reference and reference[0])
        if "psnr" in found:
            lines.append(
                f"- posterior mean: PSNR {found['psnr']:.2f} dB, SSIM {found['ssim']:.3f} "
                f"(data range {found['data_range']:.3g}, the truth's max - min)"
            )
        if "baseline_psnr" in found:
            lines.append(
                f"- {reference[1]} (the classical reconstruction): PSNR {found['baseline_psnr']:.2f} dB, "
                f"SSIM {found['baseline_ssim']:.3f}, on the same data range"
            )
        lines.append(
            f"- coverage: the {percent} holds the truth at {found['covered']} of {found['coordinates']} "
            f"pixels ({100 * found['coverage']:.1f}%)"
        )
    lines += [
        f"- cost: {result.nfe} network evaluations (NFE) and {result.grad_evals} VJPs per draw, "
        f"{result.wall_time:.1f} s",
        "",
    ]
    if result.verdict is not None:
        lines += ["## Verdict", "", "```", str(result.verdict), "```", ""]
    figures = {"summary": summary_maps(result, truth, level, problem), "draws": sample_grid(result)}
    if result.kind == "mcmc" and result.chains >= 2 and result.draws >= 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", diagnostics.ConvergenceWarning)
            report = diagnostics.convergence(result)
        figures["convergence"] = convergence_maps(report)
        lines += ["## Convergence", "", "```", str(report), "```", ""]
    if weighted:
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
    result.save(directory / "samples.safetensors")
    result.summary(level=level).to_csv(directory / "summary.csv")
    table = (
        "Monte-Carlo standard error from the independent runs and the runs' agreement"
        if weighted
        else "ArviZ's ESS, R-hat and MCSE"
    )
    lines += [
        "## Files",
        "",
        "- [samples.safetensors](samples.safetensors): the draws (`posterior.PosteriorSamples.load`)",
        f"- [summary.csv](summary.csv): per pixel mean, sd, {percent}, {table}",
    ]
    lines += [f"- [{name}.png]({name}.png)" for name in figures] + ["", "## Figures", ""]
    for name, fig in figures.items():
        fig.savefig(directory / f"{name}.png", dpi=110)
        lines += [f"![{name}]({name}.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(lines))
    return path
