"""Unknown forward-model parameters against exact posteriors (``posterior.sample_with_parameters``).

Two families of simulated problems, shared with ``tests/posterior/test_parameters.py``:

- **noise level**: a 4-d Gaussian prior ``N(m, I)``, 12 random measurements, ``sigma_y`` drawn from a
  log-uniform prior on [0.1, 2]; the exact posterior of ``sigma_y`` (a 1-d quadrature of Gaussian
  evidences on 4001 points) and the exact posterior mean of ``x`` (the mixture over ``sigma_y``).
  Graded per problem by the KS distance of the weighted ``sigma_y`` draws, the pooled Kish ESS of the
  nodes, the error of the mean of ``x`` in standard errors, whether the central 90% interval covers
  the true ``sigma_y``; over problems by the mean error of the CDF at the exact 10/50/90% quantiles
  in standard errors (from the problems' spread) and the coverage.
- **gain**: a 4-d mixture prior (3 components), ``y = g A x + noise`` with ``g`` in {0.7, 1, 1.4}
  (prior 0.5 / 0.3 / 0.2); graded by the total variation between the estimated and the exact
  posterior of ``g`` (closed-form evidences).

    python benchmarks/parameters.py --out docs/results/parameters.json

Prints a table and writes JSON. Never asserts.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributions import ExpTransform, TransformedDistribution, Uniform

import operators as ops
import posterior as post
from posterior.diagnostics import MIN_NODES
from posterior.priors import Gaussian, GaussianMixture
from posterior.utils import write_json

LOW, HIGH = 0.1, 2.0  # the noise level's log-uniform prior
KS_001 = 1.95  # the Kolmogorov-Smirnov statistic exceeds 1.95 / sqrt(n) with probability 0.001


def log_uniform(low: float = LOW, high: float = HIGH, dtype: torch.dtype = torch.float64):
    bounds = torch.tensor([math.log(low), math.log(high)], dtype=dtype)
    return TransformedDistribution(Uniform(bounds[0], bounds[1]), ExpTransform())


def noise_level_problem(seed: int, rows: int = 12):
    """A 4-d Gaussian prior, ``rows`` random measurements, sigma_y drawn from its prior; the model of
    sigma, the true sigma, and the exact posterior of sigma (CDF on a grid of 4001 points, uniform in
    log sigma) with the exact posterior mean of x (the mixture over sigma)."""
    g = torch.Generator().manual_seed(seed)
    prior = Gaussian(torch.randn(4, generator=g, dtype=torch.float64), 1.0)
    A = ops.Matrix(torch.randn(rows, 4, generator=g, dtype=torch.float64) / 2)
    sigma = math.exp(
        math.log(LOW) + math.log(HIGH / LOW) * float(torch.rand((), generator=g, dtype=torch.float64))
    )
    y = ops.GaussianNoise(sigma).sample(A(prior.sample(1, seed=g)), g)[0]

    def model(sigma):
        return post.InverseProblem(A, ops.GaussianNoise(sigma), y)

    # closed forms on a grid uniform in log sigma: with A A^T = U diag(lam) U^T and r = U^T (y - A m),
    # log p(y | sigma) = -1/2 sum log(2 pi (lam + sigma^2)) + r^2 / (lam + sigma^2), and
    # E[x | y, sigma] = m + A^T U (r / (lam + sigma^2))
    grid = torch.exp(torch.linspace(math.log(LOW), math.log(HIGH), 4001, dtype=torch.float64))
    lam, U = torch.linalg.eigh(A.matrix @ A.matrix.T)
    r = U.T @ (y - A.matrix @ prior.mean())
    scale = lam + grid[:, None] ** 2  # (grid, rows)
    log_z = -0.5 * (torch.log(2 * math.pi * scale) + r**2 / scale).sum(1)
    posterior = torch.softmax(log_z, 0)  # the prior is uniform in log sigma
    mean_x = prior.mean() + (posterior[:, None] * (r / scale)).sum(0) @ U.T @ A.matrix
    return prior, model, sigma, (grid, torch.cumsum(posterior, 0)), mean_x


QUANTILES = (0.1, 0.5, 0.9)


def coverage_holds(grades) -> bool:
    """The share of problems whose true sigma lies in the central 90% of the estimated posterior (its
    estimated CDF at the truth between 0.05 and 0.95) is within 3 binomial standard deviations of 0.9."""
    covered = sum(g["covered"] for g in grades) / len(grades)
    return abs(covered - 0.9) <= 3 * math.sqrt(0.9 * 0.1 / len(grades))


def sigma_grades(result, sigma: float, exact_cdf) -> dict:
    """The weighted sigma draws against the exact posterior: KS distance, the estimated CDF minus the
    exact one at the exact 10%, 50% and 90% quantiles, whether the true sigma lies in the central 90%
    of the estimated posterior (its estimated CDF there between 0.05 and 0.95), and the pooled Kish ESS
    of the nodes."""
    grid, cdf = exact_cdf
    w, s = result.weights().double(), result.params["sigma"].reshape(-1).double()
    order = torch.argsort(s)
    s, w = s[order], w[order]
    F = torch.cumsum(w, 0)
    exact = torch.from_numpy(np.interp(s.numpy(), grid.numpy(), cdf.numpy()))
    ks = float(torch.maximum((F - exact).abs(), (F - w - exact).abs()).max())
    errors = [float(w[s <= float(np.interp(q, cdf.numpy(), grid.numpy()))].sum()) - q for q in QUANTILES]
    pit = float(w[s < sigma].sum())  # the estimated posterior CDF at the true sigma
    node_weights = result.trace["node_weights"] / result.chains
    return {
        "ks": ks,
        "cdf_errors": errors,
        "covered": 0.05 <= pit <= 0.95,
        "nodes": float(1 / (node_weights**2).sum()),
    }


def x_standard_error(result) -> Tensor:
    """The Monte-Carlo error of the weighted mean of x: the particles' (sd^2 over their pooled Kish
    ESS) plus the nodes' (the weighted variance of the nodes' means over the nodes' pooled Kish ESS)."""
    w = result.weights().double()
    x = result.samples.double().reshape(-1, *result.event_shape)
    nodes = result.trace["node_weights"].numel()
    node_w = w.reshape(nodes, -1).sum(1)
    node_means = (w.reshape(nodes, -1, 1) * x.reshape(nodes, -1, x[0].numel())).sum(1) / node_w[:, None]
    node_means = torch.where(node_w[:, None] > 0, node_means, 0.0)  # nodes without weight count for nothing
    mean = result.mean().double().reshape(-1)
    between = (node_w[:, None] * (node_means - mean) ** 2).sum(0)
    se2 = result.std().double().reshape(-1) ** 2 * (w**2).sum() + between * (node_w**2).sum()
    return se2.sqrt().reshape(result.event_shape)


def run_noise_level(seeds, sampler, num_samples, nodes=16, refine=6, rows=12):
    out = []
    for seed in seeds:
        prior, model, sigma, exact_cdf, mean_x = noise_level_problem(seed, rows)
        result = post.sample_with_parameters(
            model,
            prior,
            sampler,
            num_samples,
            parameters={"sigma": log_uniform()},
            nodes=nodes,
            refine=refine,
            seed=seed,
            progress=False,
        )
        grades = sigma_grades(result, sigma, exact_cdf)
        grades["verdict_ok"] = result.verdict.ok
        grades["x_z"] = float(((result.mean() - mean_x) / x_standard_error(result)).abs().max())
        out.append(grades)
    return out


def noise_level_holds(grades, chains: int = 2) -> bool:
    """Each problem: the pooled nodes keep the library's floor (``MIN_NODES`` per chain) effective, the
    KS distance is within the
    0.001 critical value for that many independent draws, and the mean of x is within 4.5 standard
    errors of the exact one (:func:`x_standard_error`). Over the problems:
    the mean CDF error at each exact quantile is within 4 of its standard errors (from the problems'
    spread) of 0."""
    each = all(
        g["nodes"] >= MIN_NODES * chains and g["ks"] <= KS_001 / math.sqrt(g["nodes"]) and g["x_z"] < 4.5
        for g in grades
    )
    errors = torch.tensor([g["cdf_errors"] for g in grades], dtype=torch.float64)
    unbiased = bool((errors.mean(0).abs() <= 4 * errors.std(0) / math.sqrt(len(grades))).all())
    return each and unbiased


GAINS = torch.tensor([0.7, 1.0, 1.4], dtype=torch.float64)
GAIN_PRIOR = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def gain_problem(seed: int):
    """A 4-d mixture prior (3 components), y = g A x + noise with the gain g one of GAINS (prior
    GAIN_PRIOR, index drawn from it); the model of the gain's index and its exact posterior."""
    g = torch.Generator().manual_seed(seed)
    prior = GaussianMixture.random(4, num_components=3, separation=2.0, std=0.6, seed=seed)
    A = torch.randn(3, 4, generator=g, dtype=torch.float64) / 2
    true = int(torch.multinomial(GAIN_PRIOR, 1, generator=g))
    noise = ops.GaussianNoise(0.3)
    y = noise.sample(ops.Matrix(GAINS[true] * A)(prior.sample(1, seed=g)), g)[0]

    def model(gain):
        return post.InverseProblem(ops.Matrix(GAINS[gain] * A), noise, y)

    log_z = torch.stack([prior.log_evidence(model(k)) for k in range(len(GAINS))]).double()
    return prior, model, torch.softmax(log_z + GAIN_PRIOR.log(), 0)


def run_gain(seeds, sampler, num_samples, chains=4):
    """Per problem: the estimated posterior of the gain (the particles' weights, pooled over chains)
    and the exact one, shape ``(problems, 2, gains)``."""
    out = []
    for seed in seeds:
        prior, model, exact = gain_problem(seed)
        result = post.sample_with_parameters(
            model,
            prior,
            sampler,
            num_samples,
            parameters={"gain": torch.distributions.Categorical(GAIN_PRIOR)},
            chains=chains,
            seed=seed,
            progress=False,
        )
        estimate = torch.stack(
            [(result.weights().double() * (result.params["gain"].reshape(-1) == k)).sum() for k in range(3)]
        )
        out.append(torch.stack([estimate, exact]))
    return torch.stack(out)


def total_variation(runs) -> Tensor:
    return 0.5 * (runs[:, 0] - runs[:, 1]).abs().sum(1)


def blind_deblurring(prior, width: float = 1.2, sigma: float = 0.1, index: int = 3, seed: int = 0):
    """A held-out digit blurred by a Gaussian kernel of ``width`` pixels plus noise of ``sigma``: the
    forward models with a Gaussian and a box kernel, the priors of their parameters, and ``y``."""
    from posterior.data import digits

    dtype = prior.dtype
    truth = digits("test")[index].to(dtype)
    blur = ops.Blur.gaussian(truth.shape, std=width, size=7)
    y = ops.GaussianNoise(sigma).sample(blur(truth[None]), torch.Generator().manual_seed(seed))[0]

    def gaussian(width, sigma):  # a 7 x 7 Gaussian kernel of std width pixels
        blur = ops.Blur.gaussian(truth.shape, std=float(width), size=7)
        return post.InverseProblem(blur, ops.GaussianNoise(sigma), y)

    def box(size, sigma):  # a box of 1, 3 or 5 pixels (size is the index)
        return post.InverseProblem(
            ops.Blur.uniform(truth.shape, (1, 3, 5)[int(size)]), ops.GaussianNoise(sigma), y
        )

    sigma_prior = log_uniform(0.03, 0.5, dtype)
    priors = {
        "gaussian": {
            "width": Uniform(torch.tensor(0.6, dtype=dtype), torch.tensor(2.0, dtype=dtype)),
            "sigma": sigma_prior,
        },
        "box": {"size": torch.distributions.Categorical(torch.ones(3, dtype=dtype)), "sigma": sigma_prior},
    }
    return truth, {"gaussian": gaussian, "box": box}, priors


def fitted_gaussian():
    """A Gaussian prior fitted to the 1500 training digits (covariance plus 1e-3 I), in float64."""
    from posterior.data import digits

    train = digits("train").double().reshape(1500, -1)
    covariance = torch.cov(train.T) + 1e-3 * torch.eye(train.shape[1], dtype=torch.float64)
    return Gaussian(train.mean(0).reshape(1, 16, 16), covariance)


def interval(result, name: str) -> tuple[float, float, float]:
    """The weighted posterior mean and central 90% interval of a scalar parameter."""
    table = result.summary().loc[name]
    return float(table["mean"]), float(table["lower"]), float(table["upper"])


def digits_rows(steps: int, particles: int, nodes: int = 32) -> list[dict]:
    """Blind deblurring of a held-out digit: the Gaussian prior fitted to the training digits with
    exact draws (and its exact posterior of the width on a 54 x 26 grid of exact evidences), then the
    bundled digits network with AFDPS; and the evidence of the Gaussian-blur model against a box blur."""
    rows = []
    gaussian = fitted_gaussian()
    truth, models, priors = blind_deblurring(gaussian)
    for name in ("gaussian", "box"):
        start = time.perf_counter()
        result = post.sample_with_parameters(
            models[name],
            gaussian,
            post.samplers.ExactPosterior(),
            64,
            parameters=priors[name],
            nodes=nodes,
            seed=0,
            progress=False,
        )
        rows.append(digits_row(f"fitted Gaussian prior, exact draws, {name} blur", result, truth, start))
    widths = torch.linspace(0.6, 2.0, 56, dtype=torch.float64)[1:-1]
    sigmas = torch.exp(torch.linspace(math.log(0.07), math.log(0.14), 26, dtype=torch.float64))
    log_z = torch.tensor(
        [[float(gaussian.log_evidence(models["gaussian"](w, s))) for s in sigmas] for w in widths]
    )
    marginal = torch.softmax((log_z + torch.log(1 / sigmas)).reshape(-1), 0).reshape(log_z.shape).sum(1)
    cdf = torch.cumsum(marginal, 0).numpy()
    rows[0]["grid_width"] = [
        float((marginal * widths).sum()),
        *(float(np.interp(q, cdf, widths.numpy())) for q in (0.05, 0.95)),
    ]
    network = post.priors.pretrained("digits")
    truth, models, priors = blind_deblurring(network)
    start = time.perf_counter()
    result = post.sample_with_parameters(
        models["gaussian"],
        network,
        post.samplers.AFDPS(steps=steps),
        particles,
        parameters=priors["gaussian"],
        nodes=nodes // 4,
        seed=0,
        progress=False,
    )
    rows.append(
        digits_row(f"digits network, AFDPS {steps} steps x {particles}, gaussian blur", result, truth, start)
    )
    at_truth = models["gaussian"](torch.tensor(1.2), torch.tensor(0.1))
    for n in (particles, 4 * particles):  # the evidence of single runs at the true parameters
        runs = post.samplers.AFDPS(steps=steps).sample(at_truth, network, n, chains=4, seed=1, progress=False)
        rows[-1][f"log_evidence_at_truth_{n}"] = list(runs.evidence().runs)
    return rows


def digits_row(label: str, result, truth, start) -> dict:
    evidence = result.evidence()
    row = {
        "setting": label,
        "log_evidence": evidence.log_z,
        "log_evidence_se": evidence.standard_error,
        "sigma": interval(result, "sigma"),
        "psnr": float(-10 * torch.log10(((result.mean().double() - truth.double()) ** 2).mean())),
        "verdict": result.verdict.line,
        "log_evidence_spread": result.verdict.checks.get("log_evidence_std", math.nan),
        "problems": result.verdict.problems,
        "runs": result.trace["node_log_evidence"].numel(),
        "seconds": time.perf_counter() - start,
    }
    if "width" in result.params:
        row["width"] = interval(result, "width")
    if "size" in result.params:
        sizes = result.params["size"].reshape(-1)
        row["size_probabilities"] = [
            float((result.weights().double() * (sizes == k)).sum()) for k in range(3)
        ]
    return row


def noise_level_row(
    label: str, sampler, num_samples: int, problems: int, nodes: int, refine: int = 6, rows: int = 12
):
    start = time.perf_counter()
    grades = run_noise_level(range(problems), sampler, num_samples, nodes=nodes, refine=refine, rows=rows)
    errors = torch.tensor([g["cdf_errors"] for g in grades], dtype=torch.float64)
    t = errors.mean(0) / (errors.std(0) / math.sqrt(problems)) if problems > 1 else torch.full((3,), math.nan)
    ks = sorted(g["ks"] for g in grades)
    return {
        "setting": label,
        "problems": problems,
        "nodes": nodes,
        "rounds": 1 + refine,
        "measurements": rows,
        "ks_median": ks[len(ks) // 2],
        "ks_max": ks[-1],
        "ks_bound_min": min(KS_001 / math.sqrt(g["nodes"]) for g in grades),
        "effective_nodes_min": min(g["nodes"] for g in grades),
        "effective_nodes_median": sorted(g["nodes"] for g in grades)[problems // 2],
        "cdf_t_max": float(t.abs().max()),
        "coverage_90": sum(g["covered"] for g in grades) / problems,
        "x_z_max": max(g["x_z"] for g in grades),
        "holds": noise_level_holds(grades),
        "verdict_failures": sum(not g["verdict_ok"] for g in grades),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="noise-level problems with exact draws")
    parser.add_argument("--afdps-problems", type=int, default=20)
    parser.add_argument("--gain-problems", type=int, default=50)
    parser.add_argument("--steps", type=int, default=40, help="AFDPS noise levels")
    parser.add_argument("--digits-steps", type=int, default=40, help="AFDPS noise levels on the digits")
    parser.add_argument("--digits-particles", type=int, default=64)
    parser.add_argument("--digits-nodes", type=int, default=32, help="per round; the network gets a quarter")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parameters.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", post.diagnostics.PosteriorWarning)  # graded here, against exact answers
    exact, afdps = post.samplers.ExactPosterior(), post.samplers.AFDPS(steps=args.steps)
    rows = [
        noise_level_row("exact draws", exact, 64, args.problems, 16),
        noise_level_row("exact draws, prior nodes only", exact, 64, args.problems, 16, refine=0),
        noise_level_row("exact draws, 200 measurements", exact, 64, args.problems, 16, rows=200),
        noise_level_row(
            "exact draws, 200 measurements, prior nodes only",
            exact,
            64,
            args.problems,
            16,
            refine=0,
            rows=200,
        ),
        noise_level_row(f"AFDPS {args.steps} steps x 128", afdps, 128, args.afdps_problems, 8),
    ]
    print(
        "| setting | problems | nodes x rounds | KS median (max) | effective nodes min | CDF error t max | 90% coverage | x error max (se) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['problems']} | {r['nodes']} x {r['rounds']} | {r['ks_median']:.3f} ({r['ks_max']:.3f}) | "
            f"{r['effective_nodes_min']:.1f} | {r['cdf_t_max']:.1f} | {r['coverage_90']:.2f} | {r['x_z_max']:.1f} | "
            f"{r['verdict_failures']} |",
            flush=True,
        )
    gains = []
    for label, sampler, n in (
        ("exact draws", exact, 16),
        (f"AFDPS {args.steps} steps x 128, 4 chains", afdps, 128),
    ):
        start = time.perf_counter()
        tv = total_variation(run_gain(range(args.gain_problems), sampler, n))
        gains.append(
            {
                "setting": label,
                "problems": args.gain_problems,
                "tv_mean": float(tv.mean()),
                "tv_max": float(tv.max()),
                "seconds": time.perf_counter() - start,
            }
        )
        print(
            f"gain, {label}: total variation mean {gains[-1]['tv_mean']:.3f}, max {gains[-1]['tv_max']:.3f}",
            flush=True,
        )
    digits = digits_rows(args.digits_steps, args.digits_particles, args.digits_nodes)
    for r in digits:
        width = r.get("width") or r.get("size_probabilities")
        print(
            f"digits, {r['setting']}: log p(y) {r['log_evidence']:.2f} +- {r['log_evidence_se']:.2f}, width {width}, sigma {r['sigma']}, PSNR {r['psnr']:.1f}; {r['verdict']}",
            flush=True,
        )
    command = shlex.join(["python", "benchmarks/parameters.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(args.out, {"command": command, "noise_level": rows, "gain": gains, "digits": digits})
    print(f"JSON written to {args.out}")
    return rows


if __name__ == "__main__":
    main()
