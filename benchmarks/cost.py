"""Cost of the samplers on the bundled digits prior: wall time over bare network time at equal NFE.

For each sampler, box inpainting (upper half hidden) of a prior draw with ``--batch`` particles, draws
or chains in one call. In the same run the bare network is timed on a batch of the same size (the
median of ``--repeats`` sweeps of ``NFE`` calls, interleaved with the sampler runs), so that

    overhead = sampler wall time / (NFE x one bare network call)

is a ratio of two numbers measured together: 1.0 means the sampler costs nothing beyond its network
evaluations. Backpropagations through the network (VJP column) count in the sampler's time, not in
NFE. Peak memory: on CUDA the peak allocated by torch during one run; on CPU the growth of the
resident set of a forked child during one run (an estimate: memory the parent freed is reused).

Then, unless ``--no-scaling``: time per step against the batch (``--batches``, 1 to 1024) and against
the image size (``--sizes``; the digits network's convolutions at larger inputs, untrained there,
so cost only) for ``--scaling-samplers``, each beside the bare network at the same batch and size.

    python benchmarks/cost.py --steps 30 --repeats 3

Threads pinned (``--threads``, default 1). Prints tables and writes JSON (with the command line). Never
asserts.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior.priors import EDMSchedule, NetworkPrior, pretrained
from posterior.priors.unet import UNet
from posterior.utils import write_json

S = post.samplers
# name -> (sampler for `steps` NFE-steps, draws per chain given the batch, chains given the batch)
ROWS_PER_PARTICLE = (lambda batch: batch, lambda batch: 1)
ROWS_PER_CHAIN = (lambda batch: 1, lambda batch: batch)
SAMPLERS = {
    "dps": (lambda steps: S.DPS(steps=steps), *ROWS_PER_PARTICLE),
    "reddiff": (lambda steps: S.RedDiff(steps=steps), *ROWS_PER_PARTICLE),
    "reddiff-gaussian": (lambda steps: S.RedDiff(steps=steps, mode="gaussian"), *ROWS_PER_CHAIN),
    "afdps": (lambda steps: S.AFDPS(steps=steps), *ROWS_PER_PARTICLE),
    "mcgdiff": (lambda steps: S.MCGdiff(steps=steps), *ROWS_PER_PARTICLE),
    "tds": (lambda steps: S.TDS(steps=steps), *ROWS_PER_PARTICLE),
    "lml": (
        lambda steps: S.LevenbergMarquardtLangevin(steps=steps // 2, corrector_steps=1),
        *ROWS_PER_PARTICLE,
    ),
    "dlg": (
        lambda steps: S.DenoisingLangevinGibbs(
            burn_in=steps // 6, thin=1, init_steps=1, ode_steps=1
        ),
        *ROWS_PER_CHAIN,
    ),
    "joint-projection": (
        lambda steps: S.JointPosterior(steps=steps, guidance="projection"),
        *ROWS_PER_PARTICLE,
    ),
    "joint-pigdm": (lambda steps: S.JointPosterior(steps=steps, guidance="pigdm"), *ROWS_PER_PARTICLE),
}
BACKPROP_FREE_LIMIT, VJP_LIMIT = 1.2, 3.5  # the targets of docs/benchmarks.md


def inpainting_problem(prior, size: int = 16) -> post.InverseProblem:
    """The upper half of a ``size x size`` image hidden, Gaussian noise 0.05 (a prior draw, or noise for
    sizes the prior was not trained at: only the cost matters there)."""
    g = torch.Generator().manual_seed(1)
    shape = (1, size, size)
    truth = prior.sample(1, steps=20, seed=0) if size == 16 else torch.randn(1, *shape, generator=g)
    truth = truth.to(prior.device, prior.dtype)
    operator = ops.Inpainting.box(shape, 0, 0, size // 2, size)
    noise = ops.GaussianNoise(0.05)
    y = noise.sample(operator(truth), torch.Generator(device=prior.device).manual_seed(1))[0]
    return post.InverseProblem(operator, noise, y)


def bare_network_seconds(prior, batch: int, calls: int) -> float:
    """Seconds for ``calls`` denoiser calls on a batch of ``batch`` under ``no_grad``."""
    x = torch.randn(batch, *prior.event_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(prior.device, prior.dtype)
    sigmas = torch.logspace(1.5, -2, calls)
    with torch.no_grad():
        synchronize(prior.device)
        start = time.perf_counter()
        for s in sigmas:
            prior.denoise(x, float(s))
        synchronize(prior.device)
        return time.perf_counter() - start


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def run_once(name: str, steps: int, batch: int, prior, problem, seed: int):
    make, draws, chains = SAMPLERS[name]
    return make(steps).sample(problem, prior, draws(batch), chains=chains(batch), seed=seed, progress=False)


def peak_megabytes(name: str, steps: int, batch: int, prior, problem) -> float:
    """Peak memory of one run (see the module docstring)."""
    device = torch.device(prior.device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        run_once(name, steps, batch, prior, problem, 0)
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_peak, args=(queue, name, steps, batch, prior, problem))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def _child_peak(queue, name, steps, batch, prior, problem) -> None:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run_once(name, steps, batch, prior, problem, 0)
    queue.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)  # KiB on Linux


def measure(name: str, steps: int, batch: int, repeats: int, prior, problem, memory: bool = True) -> dict:
    run_once(
        name, steps, batch, prior, problem, 99
    )  # warm-up: lazy initialisation (e.g. Adam's) is not timed
    runs, bare = [], []
    for r in range(repeats):
        synchronize(prior.device)
        result = run_once(name, steps, batch, prior, problem, r)
        synchronize(prior.device)
        runs.append(result.wall_time)
        bare.append(bare_network_seconds(prior, batch, result.nfe))
    wall, network = statistics.median(runs), statistics.median(bare)
    vjp = result.grad_evals
    return {
        "sampler": name,
        "steps": steps,
        "batch": batch,
        "nfe": result.nfe,
        "vjp": vjp,
        "wall_time": wall,
        "network_time": network,
        "overhead": wall / network,
        "target": VJP_LIMIT if vjp else BACKPROP_FREE_LIMIT,
        "ms_per_row_step": 1e3 * wall / (result.nfe * batch),
        "peak_mb": peak_megabytes(name, steps, batch, prior, problem) if memory else float("nan"),
    }


def resized_prior(prior, size: int) -> NetworkPrior:
    """The digits network's UNet (without its 16x16 Gaussian part) as a prior on ``size x size`` images."""
    config = {k: v for k, v in prior.net.config.items() if k != "gaussian_residual"}
    net = UNet(**config)
    net.load_state_dict(prior.net.state_dict(), strict=False)
    net = net.to(prior.device, prior.dtype).eval().requires_grad_(False)
    return NetworkPrior(net, parametrization="edm", schedule=EDMSchedule(), event_shape=(1, size, size))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("samplers", nargs="*", help=f"any of {', '.join(SAMPLERS)} (default: all)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--scaling-samplers", default="afdps,dps")
    parser.add_argument("--scaling-steps", type=int, default=6)
    parser.add_argument("--batches", default="1,4,16,64,256,1024")
    parser.add_argument("--sizes", default="16,32,64")
    parser.add_argument("--size-batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prior = pretrained("digits", device=args.device)
    problem = inpainting_problem(prior)
    names = args.samplers or list(SAMPLERS)
    unknown = sorted(set(names) - set(SAMPLERS))
    if unknown:
        parser.error(f"unknown samplers {unknown}; choose from {list(SAMPLERS)}")

    header = (
        f"{'sampler':<17} {'NFE':>5} {'VJP':>5} {'wall s':>8} {'network s':>10} {'overhead':>9} "
        f"{'target':>7} {'ms/row-step':>12} {'peak MB':>8}"
    )
    print(f"batch {args.batch}, {args.steps} steps, {args.threads} thread(s), {args.device}")
    print(header + "\n" + "-" * len(header))
    rows = []
    for name in names:
        r = measure(name, args.steps, args.batch, args.repeats, prior, problem, not args.no_memory)
        rows.append(r)
        print(
            f"{name:<17} {r['nfe']:>5} {r['vjp']:>5} {r['wall_time']:>8.2f} {r['network_time']:>10.2f} "
            f"{r['overhead']:>9.2f} {r['target']:>7.1f} {r['ms_per_row_step']:>12.3f} {r['peak_mb']:>8.1f}",
            flush=True,
        )
    command = shlex.join(["python", "benchmarks/cost.py", *(sys.argv[1:] if argv is None else argv)])
    args_text = {k: str(v) for k, v in vars(args).items()}
    out = {"command": command, "args": args_text, "rows": rows, "batches": [], "sizes": []}
    if not args.no_scaling:
        scaling = args.scaling_samplers.split(",")
        print("\ntime per step against the batch (s), overhead in brackets")
        for batch in [int(b) for b in args.batches.split(",")]:
            for name in scaling:
                r = measure(name, args.scaling_steps, batch, 1, prior, problem, memory=False)
                out["batches"].append(r)
                print(
                    f"  {name:<8} batch {batch:>5}: {r['wall_time'] / r['nfe']:.4f} ({r['overhead']:.2f})",
                    flush=True,
                )
        print("\ntime per step against the image size (s), batch", args.size_batch)
        for size in [int(s) for s in args.sizes.split(",")]:
            big = resized_prior(prior, size)
            big_problem = inpainting_problem(big, size)
            for name in scaling:
                r = measure(name, args.scaling_steps, args.size_batch, 1, big, big_problem, memory=False)
                r["size"] = size
                out["sizes"].append(r)
                print(
                    f"  {name:<8} {size:>3}x{size:<3}: {r['wall_time'] / r['nfe']:.4f} ({r['overhead']:.2f})",
                    flush=True,
                )
    write_json(args.out, out)
    print(f"JSON written to {args.out}")
    return out


if __name__ == "__main__":
    main()
