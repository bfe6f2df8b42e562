"""Rewrite the generated tables of the documentation from the JSON that the benchmark commands wrote.

A generated table sits between ``<!-- table: NAME -->`` and ``<!-- end table -->`` in a page of
``docs/``. It is rendered from JSON files in ``docs/results/`` (see ``TABLES``), each of which records
the command that wrote it; those commands and this one are named under the table. The tables of
``GENERATED`` come from the code instead (the job fields of ``docs/cli.md``: ``posterior.jobs.SCHEMA``). ``--check`` rewrites
nothing and exits with status 1 when a table differs from what its JSON renders
(``tests/benchmarks/test_render_docs.py`` runs it).

    python benchmarks/gmm.py oracle dps --steps 50 100 --out docs/results/gmm-large.json   # a benchmark
    python benchmarks/render_docs.py            # rewrite every generated table, print what it renders
    python benchmarks/render_docs.py --check    # fail if a table is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.DOTALL)


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def problem_name(row: dict) -> str:
    """The problem without its seed: every table of the docs has one seed."""
    return row["problem"].rsplit(" seed=", 1)[0]


def gmm(data: dict, key: str) -> list[str]:
    """``benchmarks/gmm.py``: one line per problem and sampler, one column per step count (``key``
    ``"steps"``) or per particle count (``"particles"``); cells ``SW/floor (mode TV)``."""
    rows = data["rows"]
    columns = sorted({r[key] for r in rows})

    def line(r: dict) -> tuple[str, str]:
        return problem_name(r), r["sampler"].split()[0]  # "afdps 4x16" -> "afdps"

    cells = {(*line(r), r[key]): r for r in rows}
    problems = list(dict.fromkeys(p for p, _ in map(line, rows)))  # pooled files: rows by problem
    header = [f"{k} steps" if key == "steps" else f"N={k}" for k in columns]
    return markdown(
        ["problem", "sampler", *header],
        [
            [
                p,
                s,
                *(
                    f"{c['sw_over_floor']:.1f} ({c['mode_tv']:.2f})"
                    for c in (cells[p, s, k] for k in columns)
                ),
            ]
            for p, s in sorted(dict.fromkeys(map(line, rows)), key=lambda ps: problems.index(ps[0]))
        ],
    )


CALIBRATION_LABELS = {"joint": "joint (one source, PiGDM)"}


def calibration(data: dict) -> list[str]:
    """``benchmarks/calibration.py``: coverages, ECDF-test p-values, verdict and time per sampler."""
    rows = []
    for r in data["rows"]:
        coverage = [r["coverage"][a] for a in ("0.5", "0.9")] + [r["hpd_coverage"][a] for a in ("0.5", "0.9")]
        rows.append(
            [CALIBRATION_LABELS.get(r["sampler"], r["sampler"])]
            + [f"{c:.2f}" for c in coverage]
            + [f"{r[k]:.2g}" for k in ("sbc_pvalue", "hpd_pvalue", "tarp_pvalue")]
            + ["yes" if r["calibrated"] else "no", f"{r['seconds']:.1f} s"]
        )
    header = ["50% central", "90% central", "50% HPD", "90% HPD", "SBC p", "HPD p", "TARP p"]
    return markdown(["sampler", *header, "calibrated", "time"], rows)


FALSE_ALARM_LABELS = {
    "sbc": "SBC ranks (ECDF, Bonferroni over 2 coordinates)",
    "hpd": "HPD ranks (ECDF)",
    "tarp": "TARP (ECDF)",
    "coverage": "central-interval coverage (4 levels)",
    "hpd coverage": "HPD-region coverage (4 levels)",
    "any": "any of them (the `calibrated` verdict)",
}


def false_alarm(data: dict) -> list[str]:
    """``benchmarks/calibration.py --false-alarm``: rejection rate of each test, binomial standard error."""
    n = data["seeds"]
    return markdown(
        ["test (level 0.01, or 3 s.e. for coverages)", "rejection rate", "s.e."],
        [
            [FALSE_ALARM_LABELS[k], f"{rate:.3f}", f"{(rate * (1 - rate) / n) ** 0.5:.3f}"]
            for k, rate in data["rates"].items()
        ],
    )


def joint_toy(data: dict) -> list[str]:
    """``benchmarks/joint_toy.py``: SW over the floor, joint and per source."""
    return markdown(
        ["sampler", "joint", "source x", "source h"],
        [[r["sampler"], *(f"{r[k]:.1f}" for k in ("joint", "source_x", "source_h"))] for r in data["rows"]],
    )


def prior_quality(data: dict, unit: str, units: str) -> list[str]:
    """``benchmarks/priors.py``: nearest-training distances and sliced W1, one column per prior."""
    rows = data["rows"]
    distance = [
        " / ".join(f"{r['nearest_train_distance'][k]:#.3g}" for k in ("samples", "held_out", "uniform_noise"))
        for r in rows
    ]
    w1 = [
        " / ".join(
            f"{r[k]:.3f}"
            for k in ("sw_samples_vs_held_out", "sw_train_vs_held_out", "sw_gaussian_vs_held_out")
        )
        for r in rows
    ]
    return markdown(
        ["", *(r["prior"] for r in rows)],
        [
            ["load time", *(f"{r['load_seconds']:.2f} s" for r in rows)],
            ["sampling time (one thread)", *(f"{r['sample_seconds']:.0f} s" for r in rows)],
            [f"nearest-training-{unit} distance: samples / held-out {units} / uniform noise", *distance],
            [f"sliced W1 to held-out {units}: samples / training {units} / fitted Gaussian", *w1],
        ],
    )


def denoising(data: dict) -> list[str]:
    """``benchmarks/priors.py``: per prior and sigma, the held-out denoising MSE of the network and of the
    two yardsticks, with the network's paired difference to each (percent of the yardstick, standard
    errors); for ultrasound also the Gaussian fitted without the training flips."""

    def paired(entry: dict, name: str) -> str:
        mean, se = entry[f"network_minus_{name}"]
        return f"{100 * mean / entry[name]:+.1f}% ({mean / se:+.1f} se)"

    unflipped = any("gaussian_unflipped" in e for r in data["rows"] for e in r["denoising"].values())
    header = [
        "prior",
        "sigma",
        "network",
        "Gaussian",
        "network vs Gaussian",
        "empirical",
        "network vs empirical",
    ]
    rows = []
    for r in data["rows"]:
        for sigma, e in r["denoising"].items():
            row = [r["prior"], f"{float(sigma):g}", f"{e['network']:.5f}", f"{e['gaussian']:.5f}"]
            row += [paired(e, "gaussian"), f"{e['empirical']:.5f}", paired(e, "empirical")]
            if unflipped:
                row.append(
                    f"{e['gaussian_unflipped']:.5f}, network {paired(e, 'gaussian_unflipped')}"
                    if "gaussian_unflipped" in e
                    else "-"
                )
            rows.append(row)
    return markdown(header + (["Gaussian without flips, network vs it"] if unflipped else []), rows)


def classifiers(data: dict) -> list[str]:
    """``benchmarks/priors.py``: the noise-level classifiers' held-out accuracy."""
    return markdown(
        ["", "exact level", "within one level", "RMS error of log sigma"],
        [
            [
                f"{r['prior']} ({r['classifier_steps']} steps)",
                *(f"{r['classifier'][k]:.2f}" for k in ("exact", "within_one_level", "rms_log_sigma_error")),
            ]
            for r in data["rows"]
            if r["classifier"]
        ],
    )


def mcmc_digits(data: dict) -> list[str]:
    """``benchmarks/mcmc_digits.py``: ArviZ's R-hat and ESS over the pixels of 4 DLG chains on digits."""
    return markdown(
        [
            "chains x draws (burn-in, thin)",
            "largest R-hat",
            "pixels above 1.01",
            "smallest bulk / tail ESS",
            "NFE",
            "time",
        ],
        [
            [
                f"{r['chains']} x {r['draws']} ({r['burn_in']}, {r['thin']})",
                f"{r['max_rhat']:.2f}",
                f"{100 * r['fraction_rhat_above_1.01']:.0f}%",
                f"{r['min_ess_bulk']:.1f} / {r['min_ess_tail']:.1f}",
                str(r["nfe"]),
                f"{r['wall_time']:.0f} s",
            ]
            for r in data["rows"]
        ],
    )


IMAGE_SAMPLERS = {
    "dps": "DPS",
    "reddiff": "RED-Diff",
    "reddiff-paper": "RED-Diff paper settings",
    "reddiff-pinv-init": "RED-Diff pinv start",
    "afdps": "AFDPS",
    "mcgdiff": "MCGdiff",
}
IMAGE_TASKS = {
    "inpainting": "box inpainting",
    "super-resolution": "2x super-resolution",
    "deblurring": "Gaussian deblurring",
}


def images(data: dict, samplers: tuple[str, ...], column: str) -> list[str]:
    """``benchmarks/images.py``: PSNR (dB) of the (weighted) mean per task, and of ``A^+ y``; one column
    per sampler and ``column`` (``"steps"`` or ``"particles"``)."""
    rows = [r for r in data["rows"] if r["sampler"] in samplers]
    columns = list(dict.fromkeys((r["sampler"], r["steps"], r["draws"]) for r in rows))
    cells = {(r["task"], r["sampler"], r["steps"], r["draws"]): r for r in rows}
    tasks = {r["task"]: r["psnr_measurement_pinv"] for r in rows}
    header = [
        f"{IMAGE_SAMPLERS[s]} {steps}" if column == "steps" else f"{IMAGE_SAMPLERS[s]} {draws} particles"
        for s, steps, draws in columns
    ]
    return markdown(
        ["task", "A+y", *header],
        [
            [IMAGE_TASKS[t], f"{pinv:.1f}", *(f"{cells[t, *c]['psnr_mean']:.1f}" for c in columns)]
            for t, pinv in tasks.items()
        ],
    )


def cost(data: dict) -> list[str]:
    """``benchmarks/cost.py``: NFE, VJP, wall and bare-network time, overhead, time per row-step, memory."""
    return markdown(
        ["sampler", "NFE", "VJP", "wall s", "network s", "overhead", "target", "ms per row-step", "peak MB"],
        [
            [
                r["sampler"],
                str(r["nfe"]),
                str(r["vjp"]),
                f"{r['wall_time']:.2f}",
                f"{r['network_time']:.2f}",
                f"{r['overhead']:.2f}",
                f"{r['target']:.1f}",
                f"{r['ms_per_row_step']:.2f}",
                f"{r['peak_mb']:.0f}",
            ]
            for r in data["rows"]
        ],
    )


def cost_scaling(data: dict, key: str) -> list[str]:
    """``benchmarks/cost.py``: seconds per step (overhead in brackets) per sampler against the batch
    (``key="batches"``) or the image size (``"sizes"``)."""
    rows = data[key]
    column = "batch" if key == "batches" else "size"
    columns = list(dict.fromkeys(r[column] for r in rows))
    cells = {
        (r["sampler"], r[column]): f"{r['wall_time'] / r['nfe']:.3g} ({r['overhead']:.2f})" for r in rows
    }
    names = dict.fromkeys(r["sampler"] for r in rows)
    header = [str(c) if key == "batches" else f"{c}x{c}" for c in columns]
    return markdown([column, *header], [[f"{n} s/step", *(cells[n, c] for c in columns)] for n in names])


DEHAZING_COLUMNS = {  # key -> (header, format, better: +1 higher, -1 lower)
    "gcnr_cyst": ("gCNR cyst", ".3f", 1),
    "gcnr_ventricle": ("gCNR ventricle", ".3f", 1),
    "contrast_cyst_db": ("contrast cyst dB", ".1f", -1),
    "contrast_ventricle_db": ("contrast ventricle dB", ".1f", -1),
    "psnr_bmode": ("PSNR B-mode", ".2f", 1),
    "ssim_bmode": ("SSIM B-mode", ".3f", 1),
    "psnr_rf": ("PSNR RF", ".2f", 1),
    "ks_wall": ("KS wall", ".3f", -1),
}


def dehazing_label(method: str, data: dict) -> str:
    labels = {
        "clean": "clean (reference)",
        "svd": f"svd (rank {data['svd_rank']})",
        "dps": "dps (one prior)",
        "joint": "joint (two priors)",
    }
    return labels.get(method, method)


def dehazing(data: dict) -> list[str]:
    """``benchmarks/dehazing.py``: means over frames per method; the best estimate per column in bold
    (the clean reference aside; its PSNRs are infinite and shown as -)."""
    rows = data["rows"]
    estimates = [r for r in rows if r["method"] != "clean"]
    best = {
        k: max(estimates, key=lambda r: sign * r[k])["method"] for k, (_, _, sign) in DEHAZING_COLUMNS.items()
    }
    lines = []
    for r in rows:
        cells = []
        for key, (_, form, _) in DEHAZING_COLUMNS.items():
            text = "-" if r["method"] == "clean" and key.startswith("psnr") else format(r[key], form)
            cells.append(f"**{text}**" if best[key] == r["method"] else text)
        seconds = f"{r['seconds_per_frame']:.0f}" if r["seconds_per_frame"] > 0 else "-"
        lines.append([dehazing_label(r["method"], data), *cells, seconds])
    return markdown(["method", *(h for h, _, _ in DEHAZING_COLUMNS.values()), "s per frame"], lines)


def dehazing_paired(data: dict) -> list[str]:
    """``benchmarks/dehazing.py``: joint minus each other estimate, mean +- standard error over frames and
    the number of frames where the joint sampler is better."""
    keys = ("gcnr_cyst", "gcnr_ventricle", "psnr_bmode", "psnr_rf")
    frames = data["per_frame"]
    lines = []
    for baseline in ("hazy", "svd", "dps"):
        cells = []
        for key in keys:
            d = data["paired_differences"][f"joint-{baseline}:{key}"]
            better = sum(j[key] > b[key] for j, b in zip(frames["joint"], frames[baseline], strict=True))
            digits = 3 if key.startswith("gcnr") else 2
            cells.append(f"{d['mean']:+.{digits}f} +- {d['se']:.{digits}f} ({better}/{len(frames['joint'])})")
        lines.append([baseline, *cells])
    return markdown(["joint minus", "gCNR cyst", "gCNR ventricle", "PSNR B-mode dB", "PSNR RF dB"], lines)


def instance_mean(calls: list[dict], key: str, instance: int) -> float:
    """``key`` averaged over the calls (repeats) of one instance."""
    values = [c[key] for c in calls if c["instance"] == instance]
    return sum(values) / len(values)


def gmm_grid(data: dict, per_instance: bool = True) -> list[str]:
    """``benchmarks/gmm.py --grid``: per sampler the worst and median SW/floor over every cell and
    instance, the mode TV, the log-evidence error (pooled estimate minus exact) and largest z-score,
    and the cost of one call; then per cell (d, d_y) and sampler the values of each instance (with
    ``--repeats``, the SW/floor and mode TV are means over an instance's calls, the log-evidence comes
    from its first call); ``per_instance=False``: the summary alone."""
    rows = data["rows"]

    def number(value, form: str) -> str:
        return "-" if value is None or value != value else format(value, form)

    summary = [
        [
            name,
            f"{s['calls']} ({s.get('repeats', 1)})",
            f"{s['worst_sw_over_floor']:.2f}",
            f"{s.get('worst_call_sw_over_floor', s['worst_sw_over_floor']):.2f}",
            f"{s['median_sw_over_floor']:.2f}",
            f"{s['median_mode_tv']:.3f}",
            number(s.get("median_abs_log_evidence_error"), ".2f"),
            number(s["largest_abs_z"], ".1f"),
            " / ".join(map(str, s["nfe"])) + " (" + " / ".join(map(str, s["vjp"])) + ")",
            f"{s['mean_wall_time']:.1f} s",
        ]
        for name, s in data["summary"].items()
    ]
    lines = markdown(
        [
            "sampler",
            "calls (per instance)",
            "worst SW/floor",
            "worst call",
            "median SW/floor",
            "median mode TV",
            "median abs log Z error",
            "largest abs z",
            "NFE (VJP) per particle",
            "s per call",
        ],
        summary,
    )
    if not per_instance:
        return lines
    cells = list(dict.fromkeys((r["dim"], r["rows"], r["sampler"]) for r in rows))
    per_cell = []
    for dim, num_rows, name in cells:
        calls = sorted(
            (r for r in rows if (r["dim"], r["rows"], r["sampler"]) == (dim, num_rows, name)),
            key=lambda r: r["instance"],
        )
        mine = [r for r in calls if r.get("repeat", 0) == 0]  # one per instance
        ratio, tv = (
            [instance_mean(calls, key, r["instance"]) for r in mine] for key in ("sw_over_floor", "mode_tv")
        )
        per_cell.append(
            [
                str(dim),
                str(num_rows),
                name,
                " / ".join(f"{v:.2f}" for v in ratio),
                " / ".join(f"{v:.2f}" for v in tv),
                " / ".join(
                    f"{number(r.get('log_evidence_error'), '+.2f')} ({number(r.get('log_evidence_z'), '+.1f')})"
                    for r in mine
                ),
                f"{sum(r['wall_time'] for r in calls) / len(calls):.1f} s",
            ]
        )
    header = ["d", "d_y", "sampler", "SW/floor per instance", "mode TV", "log Z error (z)", "s per call"]
    return [*lines, "", *markdown(header, per_cell)]


def parameters_noise_level(data: dict) -> list[str]:
    """``benchmarks/parameters.py``: the noise-level problems, one line per setting."""
    return markdown(
        [
            "setting",
            "problems",
            "measurements",
            "nodes (max rounds)",
            "KS median (max)",
            "effective nodes min",
            "CDF error, max abs t",
            "90% coverage",
            "x error, max (se)",
            "failed verdicts",
        ],
        [
            [
                r["setting"],
                str(r["problems"]),
                str(r["measurements"]),
                f"{r['nodes']} ({r['rounds']})",
                f"{r['ks_median']:.3f} ({r['ks_max']:.3f})",
                f"{r['effective_nodes_min']:.1f}",
                f"{r['cdf_t_max']:.1f}",
                f"{r['coverage_90']:.2f}",
                f"{r['x_z_max']:.1f}",
                str(r["verdict_failures"]),
            ]
            for r in data["noise_level"]
        ],
    )


def parameters_gain(data: dict) -> list[str]:
    """``benchmarks/parameters.py``: total variation to the exact posterior of the discrete gain."""
    return markdown(
        ["setting", "problems", "total variation, mean", "max"],
        [
            [r["setting"], str(r["problems"]), f"{r['tv_mean']:.3f}", f"{r['tv_max']:.3f}"]
            for r in data["gain"]
        ],
    )


def parameters_digits(data: dict) -> list[str]:
    """``benchmarks/parameters.py``: blind deblurring of a digit, per prior and forward model."""

    def interval(v) -> str:
        return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    rows = []
    for r in data["digits"]:
        if "width" in r:
            kernel = f"width {interval(r['width'])}"
            if "grid_width" in r:
                kernel += f"; grid of exact evidences {interval(r['grid_width'])}"
        else:
            kernel = "box 1 / 3 / 5: " + " / ".join(f"{p:.3f}" for p in r["size_probabilities"])
        status = "OK" if not r["problems"] else f"{len(r['problems'])} checks failed"
        rows.append(
            [
                r["setting"],
                kernel,
                interval(r["sigma"]),
                f"{r['log_evidence']:.2f} ± {r['log_evidence_se']:.2f}",
                f"{r['log_evidence_spread']:.2f}",
                f"{r['psnr']:.1f}",
                status,
                str(r["runs"]),
                f"{r['seconds']:.0f}",
            ]
        )
    lines = markdown(
        [
            "setting",
            "kernel: mean [90% interval]",
            "sigma",
            "log p(y) ± se",
            "chains' log p(y) sd",
            "PSNR of the mean (dB)",
            "verdict",
            "runs in the final rounds",
            "seconds",
        ],
        rows,
    )
    for key, runs in data["digits"][-1].items():
        if key.startswith("log_evidence_at_truth_"):
            shown = ", ".join(f"{v:.1f}" for v in runs)
            lines += [
                "",
                f"AFDPS at the true width and noise level, 4 runs of {key.rsplit('_', 1)[1]} particles: "
                f"log p(y) = {shown}.",
            ]
    return lines


def mean_se(entry: dict, key: str, digits: int = 2) -> str:
    """``entry[key] = [mean, standard error]`` as ``mean ± se`` (the mean alone when the error is NaN;
    ``-`` when the key is missing)."""
    if key not in entry:
        return "-"
    mean, se = entry[key]
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se == se else f"{mean:.{digits}f}"


def acquisition(data: dict) -> list[str]:
    """``benchmarks/acquisition.py``: per acceleration and policy, the mean +- standard error over the
    images of PSNR, SSIM and 90% coverage, and max_entropy's paired PSNR gain over the policy."""

    images = len({r["image"] for r in data["rows"]})
    lines = markdown(
        [
            "acceleration",
            "policy",
            "PSNR (dB)",
            "SSIM",
            "90% coverage",
            "max_entropy minus this, PSNR (paired)",
        ],
        [
            [
                e["acceleration"],
                e["policy"],
                mean_se(e, "psnr"),
                mean_se(e, "ssim"),
                mean_se(e, "coverage"),
                "" if e["policy"] == "max_entropy" else mean_se(e, "psnr_max_entropy_minus"),
            ]
            for e in data["summary"]
        ],
    )
    return [*lines, "", f"Means ± standard errors over {images} held-out images."]


def phantoms_table(data: dict) -> list[str]:
    """``benchmarks/phantoms.py``: per task and sampler, means +- standard errors over the images of PSNR,
    SSIM and 90% coverage, the paired PSNR difference to DPS, NFE and VJPs per draw, seconds per image
    and the time over DPS's in the same run."""

    images = len({r["image"] for r in data["rows"]})
    lines = markdown(
        [
            "task",
            "method",
            "PSNR (dB)",
            "SSIM",
            "90% coverage",
            "PSNR minus DPS",
            "NFE (VJP)",
            "s per image",
            "time / DPS",
        ],
        [
            [
                e["task"],
                e["sampler"],
                mean_se(e, "psnr"),
                mean_se(e, "ssim"),
                mean_se(e, "coverage"),
                mean_se(e, "psnr_minus_dps"),
                f"{e['nfe'][0]:.0f} ({e['vjp'][0]:.0f})" if "nfe" in e else "-",
                f"{e['seconds'][0]:.1f}" if "seconds" in e else "-",
                f"{e['time_over_dps']:.2f}" if "time_over_dps" in e else "-",
            ]
            for e in data["summary"]
        ],
    )
    return [*lines, "", f"Means ± standard errors over {images} held-out images."]


def volumes_table(data: dict) -> list[str]:
    """``benchmarks/volumes.py``: per method, means +- standard errors over the volumes of PSNR, SSIM and
    the slice-difference error, DiffusionMBIR's paired differences to slice by slice, seconds."""

    volumes = len({r["volume"] for r in data["rows"]})
    lines = markdown(
        [
            "method",
            "PSNR (dB)",
            "SSIM",
            "slice-difference error",
            "PSNR minus slice by slice",
            "error minus slice by slice",
            "s per volume",
        ],
        [
            [
                e["method"],
                mean_se(e, "psnr", 2),
                mean_se(e, "ssim", 3),
                mean_se(e, "z_error", 4),
                "" if e["method"] == "slice-by-slice" else mean_se(e, "psnr_minus_slice", 2),
                "" if e["method"] == "slice-by-slice" else mean_se(e, "z_error_minus_slice", 4),
                f"{e['seconds'][0]:.0f}" if "seconds" in e else "-",
            ]
            for e in data["summary"]
        ],
    )
    import torch

    from posterior.metrics import standard_error

    by = {m: [r for r in data["rows"] if r["method"] == m] for m in ("diffusion-mbir", "admm-coupling-only")}
    paired = []
    for metric, digits in (("psnr", 2), ("z_error", 4)):
        gain = torch.tensor(
            [
                a[metric] - b[metric]
                for a, b in zip(by["diffusion-mbir"], by["admm-coupling-only"], strict=True)
            ],
            dtype=torch.float64,
        )
        paired.append(f"{float(gain.mean()):.{digits}f} ± {standard_error(gain):.{digits}f}")
    shepp_logan = data.get("truth") == "shepp_logan_volume"
    over = f"{volumes} noise draws of the 3D Shepp-Logan volume" if shepp_logan else f"{volumes} volumes"
    return [
        *lines,
        "",
        f"Means ± standard errors over {over}; differences paired by "
        f"{'noise draw (each with its own sampler seed)' if shepp_logan else 'volume'}. DiffusionMBIR minus "
        f"admm-coupling-only (the total variation's own share): PSNR {paired[0]} dB, slice-difference "
        f"error {paired[1]}.",
    ]


TABLES = {  # name -> (JSON files under docs/results, renderer of their rows pooled)
    "gmm-baselines": (("gmm-baselines", "gmm-dds"), lambda data: gmm(data, "steps")),
    "gmm-large": (("gmm-large",), lambda data: gmm(data, "steps")),
    "smc-particles": (("smc-particles",), lambda data: gmm(data, "particles")),
    "smc-budget": (("smc-budget",), lambda data: gmm(data, "particles")),
    "gmm-grid": (("gmm-grid",), gmm_grid),
    "gmm-grid-800": (("gmm-grid-800",), gmm_grid),
    "gmm-candidates": (("gmm-candidates",), lambda data: gmm_grid(data, per_instance=False)),
    "mcmc": (("mcmc",), lambda data: gmm(data, "steps")),
    "mcmc-digits": (("mcmc-digits",), mcmc_digits),
    "calibration-separated": (("calibration-separated", "calibration-separated-dds"), calibration),
    "calibration-overlapping": (("calibration-overlapping", "calibration-overlapping-dds"), calibration),
    "calibration-digits": (
        (
            "calibration-digits-afdps",
            "calibration-digits-smc",
            "calibration-digits-mcmc",
            "calibration-digits-dds",
        ),
        calibration,
    ),
    "false-alarm": (("false-alarm",), false_alarm),
    "joint-toy": (("joint-toy",), joint_toy),
    "dehazing": (("dehazing",), dehazing),
    "dehazing-paired": (("dehazing",), dehazing_paired),
    "cost": (("cost",), cost),
    "cost-batch": (("cost",), lambda data: cost_scaling(data, "batches")),
    "cost-size": (("cost",), lambda data: cost_scaling(data, "sizes")),
    "priors-quality": (("priors-images",), lambda data: prior_quality(data, "image", "images")),
    "priors-denoising": (("priors-images",), denoising),
    "classifiers": (("priors-images",), classifiers),
    "ultrasound-quality": (("priors-ultrasound",), lambda data: prior_quality(data, "patch", "patches")),
    "ultrasound-denoising": (("priors-ultrasound",), denoising),
    "acquisition-mri": (("acquisition",), acquisition),
    "acquisition-digits": (("acquisition_digits",), acquisition),
    "phantoms": (("phantoms",), phantoms_table),
    "volumes": (("volumes",), volumes_table),
    "volumes-shepp-logan": (("volumes-shepp-logan",), volumes_table),
    "parameters-noise-level": (("parameters",), parameters_noise_level),
    "parameters-gain": (("parameters",), parameters_gain),
    "parameters-digits": (("parameters",), parameters_digits),
    "images": (
        ("images-100", "images-500"),
        lambda data: images(data, ("dps", "reddiff", "reddiff-paper", "reddiff-pinv-init"), "steps"),
    ),
    "images-smc": (
        ("images-100", "images-smc-32"),
        lambda data: images(data, ("afdps", "mcgdiff"), "particles"),
    ),
}


def job_fields() -> list[str]:
    """Every field of the job file of ``posterior run``, from the schema that validates it."""
    from posterior import jobs

    return jobs.field_table()


GENERATED = {  # name -> renderer of a table drawn from the code itself, not from JSON
    "job-fields": job_fields,
}


def render(name: str) -> str:
    """The text between the markers of table ``name``: the table, then the commands that regenerate it."""
    if name in GENERATED:
        note = "Generated from `SCHEMA` in `posterior/jobs.py` by `python benchmarks/render_docs.py`."
        return "\n".join([*GENERATED[name](), "", note]) + "\n"
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    stems, renderer = TABLES[name]
    parts = [json.loads((RESULTS / f"{stem}.json").read_text()) for stem in stems]
    if len(parts) > 1:  # one table from several commands: their rows pooled
        parts[0] = parts[0] | {"rows": [row for part in parts for row in part["rows"]]}
    data = parts[0]
    commands = " and ".join(f"`{part['command']}`" for part in parts)
    note = f"Regenerate: {commands}, then `python benchmarks/render_docs.py`."
    return "\n".join([*renderer(data), "", note]) + "\n"


def rewrite(check: bool = False) -> list[str]:
    """Rewrite every generated table (``check``: only compare); returns ``page: table`` of the stale ones."""
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = new = page.read_text()
        for match in BLOCK.finditer(text):
            where = f"{page.relative_to(ROOT)}: {match['name']}"
            body = render(match["name"])
            if body != match["body"]:
                stale.append(where)
            if not check:
                print(f"== {where}\n{body}")
                new = new.replace(match[0], match[1] + body + match[4])
        if new != text:
            page.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = rewrite(args.check)
    verb = "stale (run python benchmarks/render_docs.py)" if args.check else "rewritten"
    print(f"{len(stale)} table(s) {verb}" + "".join(f"\n  {s}" for s in stale))
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
