"""A short check for a GPU machine (under 5 minutes on one GPU): do the samplers run there, right and fast?

1. Every sampler on the 2-D mixture problem in float32 and float64 on the device: the draws are
   finite and on the device, in the dtype (failures are recorded, not raised).
2. Exactness on the device: AFDPS, 8 runs of ``--particles`` particles, mode weights against the
   exact posterior (error over the 4-standard-error + 0.02 tolerance of ``tests/samplers/test_smc.py``;
   below 1 passes).
3. Cost on the digits prior (as ``benchmarks/cost.py``): every sampler at ``--batch`` rows, wall
   time, overhead against the bare network at equal NFE, throughput (row-steps per second) and peak
   memory; then DPS at ``--big-batch`` rows with and without ``max_batch`` (peak memory).

    python benchmarks/gpu_check.py --out "$OUT/gpu_check.json"

Defaults to CUDA when present; ``--device cpu`` and small settings run it anywhere. Writes JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture, pretrained
from posterior.utils import write_json


def load_cost():
    """``benchmarks/cost.py`` as a module (this folder is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_cost", Path(__file__).with_name("cost.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


S = post.samplers
MIXTURE_SAMPLERS = {
    "dps": lambda: S.DPS(steps=50),
    "reddiff": lambda: S.RedDiff(steps=50),
    "reddiff-gaussian": lambda: S.RedDiff(steps=50, mode="gaussian"),
    "afdps": lambda: S.AFDPS(steps=50),
    "tds": lambda: S.TDS(steps=50),
    "mcgdiff": lambda: S.MCGdiff(steps=50),
    "lml": lambda: S.LevenbergMarquardtLangevin(steps=50),
    "dlg": lambda: S.DenoisingLangevinGibbs(burn_in=20, thin=2),
    "joint": lambda: S.JointPosterior(steps=50),
}


def mixture_problem(dtype, device):
    prior = GaussianMixture.grid(2, seed=0).to(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(1000)
    A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=dtype).to(device) / 2**0.5)
    noise = ops.GaussianNoise(0.5)
    y = noise.sample(A(prior.sample(1, seed=2000).to(device)), torch.Generator(device=device).manual_seed(1))
    return prior, post.InverseProblem(A, noise, y[0])


def device_matrix(device: str) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.float64):
        prior, problem = mixture_problem(dtype, device)
        for name, make in MIXTURE_SAMPLERS.items():
            row = {"sampler": name, "dtype": str(dtype)}
            try:
                r = make().sample(problem, prior, 16, chains=2, seed=0, progress=False)
                ok = r.samples.device.type == torch.device(device).type and r.samples.dtype == dtype
                row.update(ok=ok and bool(torch.isfinite(r.samples).all()), seconds=r.wall_time)
            except Exception as err:  # recorded: the point is to see every failure in one run
                row.update(ok=False, error=f"{type(err).__name__}: {err}")
            rows.append(row)
            print(f"  {name:<17} {str(dtype):<14} {'ok' if row['ok'] else row.get('error', 'wrong output')}")
    return rows


def exactness(device: str, particles: int) -> dict:
    prior, problem = mixture_problem(torch.float64, device)
    exact = prior.posterior(problem)
    start = time.perf_counter()
    result = S.AFDPS(steps=100).sample(problem, prior, particles, chains=8, seed=0, progress=False)
    W = torch.softmax(result.log_weights, 1)
    resp = exact.responsibilities(result.flat()).reshape(8, particles, -1)
    modes = torch.einsum("bn,bnk->bk", W, resp)
    ratio = (modes.mean(0) - exact.weights).abs() / (4 * modes.std(0) / 8**0.5 + 0.02)
    return {
        "particles": particles,
        "error_over_tolerance": float(ratio.max()),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--particles", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--big-batch", type=int, default=4096)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}")
    out = {"device": name, "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}

    print("1. every sampler, float32 and float64")
    out["matrix"] = device_matrix(args.device)
    print("2. AFDPS against the exact posterior")
    out["exactness"] = exactness(args.device, args.particles)
    print(f"  error / tolerance {out['exactness']['error_over_tolerance']:.2f} (passes below 1)")

    print(f"3. cost on the digits prior, batch {args.batch}")
    cost = load_cost()
    prior = pretrained("digits", device=args.device)
    problem = cost.inpainting_problem(prior)
    out["cost"] = []
    for sampler in cost.SAMPLERS:
        r = cost.measure(sampler, args.steps, args.batch, args.repeats, prior, problem)
        r["row_steps_per_second"] = r["nfe"] * args.batch / r["wall_time"]
        out["cost"].append(r)
        print(
            f"  {sampler:<17} overhead {r['overhead']:.2f} (target {r['target']}), "
            f"{r['row_steps_per_second']:.0f} row-steps/s, peak {r['peak_mb']:.0f} MB",
            flush=True,
        )
    out["micro_batches"] = []
    for max_batch in (None, args.max_batch):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(args.device)
        start = time.perf_counter()
        S.DPS(steps=4).sample(problem, prior, args.big_batch, seed=0, progress=False, max_batch=max_batch)
        peak = (
            torch.cuda.max_memory_allocated(args.device) / 2**20
            if args.device.startswith("cuda")
            else float("nan")
        )
        out["micro_batches"].append(
            {"max_batch": max_batch, "peak_mb": peak, "seconds": time.perf_counter() - start}
        )
        print(f"  DPS batch {args.big_batch}, max_batch {max_batch}: peak {peak:.0f} MB")
    write_json(args.out, out)
    print(f"JSON written to {args.out}")
    return out


if __name__ == "__main__":
    main()
