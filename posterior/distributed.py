"""Many problems, many machines: one sampler over a list of measurements, on one device or a cluster.

:func:`run_many` cuts the problems into tasks of ``batch`` problems; a task is one batched
:meth:`Sampler.sample` call (the problems share the operator and noise model; each gets ``chains``
chains) with its own seed. The result is one :class:`~posterior.PosteriorSamples` per problem, in the
order given. The tasks and their seeds do not depend on where they run, so the local and Ray
backends give the same draws for every worker count (on the same kind of device, threads pinned):

- ``"local"``: the tasks one after the other in this process (batched on one device);
- ``"ray"``: the tasks as Ray tasks, on the running Ray cluster or a local one started with
  ``workers`` CPUs (optional extra ``posterior[ray]``);
- ``"torch"``: for particle samplers, the particles of every run split across ``workers`` processes
  (``torch.distributed``, gloo on CPU) with global resampling: the answer to one run with more
  particles than one process holds. Under ``torchrun`` (an initialised default group) the tasks run
  in the calling processes, every rank returning the results; otherwise ``workers`` local processes
  are spawned (the sampler, prior and problems must then be picklable).
  Split runs draw different random numbers than single-process ones, so their draws differ from the
  other backends' (they target the same posterior).
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from posterior.problem import InverseProblem
from posterior.results import PosteriorSamples

BACKENDS = ("local", "ray", "torch")


def run_many(
    problems: InverseProblem | Sequence[InverseProblem],
    sampler,
    prior,
    num_samples: int,
    *,
    chains: int = 1,
    seeds: int | Sequence[int] = 0,
    batch: int = 1,
    backend: str = "local",
    workers: int | None = None,
    threads: int = 1,
    max_batch: int | None = None,
) -> list[PosteriorSamples]:
    """Sample the posterior of every problem; one result per problem, in order.

    Parameters
    ----------
    problems : InverseProblem or sequence of InverseProblem
        One problem with a sequence of ``seeds`` runs it once per seed (independent repeats, one
        task each; ``batch`` must then be 1).
    sampler : Sampler
    prior : DiffusionPrior
    num_samples : int
        Draws per chain (particles per run for the SMC samplers).
    chains : int
        Chains (SMC runs) per problem.
    seeds : int or sequence of int
        An int ``s`` seeds task ``k`` with ``s + k``; a sequence gives one seed per task.
    batch : int
        Problems per task (one batched call; they must share the operator and noise objects).
    backend : str
        ``"local"``, ``"ray"`` or ``"torch"`` (see the module's docstring).
    workers : int, optional
        Ray: CPUs of the local cluster started when none is running. Torch: processes per run
        (default 2).
    threads : int
        Torch threads in each Ray task or spawned process.
    max_batch : int, optional
        Passed to :meth:`Sampler.sample` (micro-batches of the network).

    Returns
    -------
    list of PosteriorSamples
        ``chains`` chains each; ``wall_time`` is the task's time shared equally by its problems.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(problems, InverseProblem):
        if isinstance(seeds, int):
            raise ValueError("one problem needs a sequence of seeds (one run per seed)")
        if batch != 1:
            raise ValueError("one problem with many seeds runs one task per seed: batch must be 1")
        problems = [problems] * len(seeds)
    problems = list(problems)
    if not problems:
        raise ValueError("no problems given")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    groups = [problems[i : i + batch] for i in range(0, len(problems), batch)]
    if isinstance(seeds, int):
        seeds = [seeds + k for k in range(len(groups))]
    if len(seeds) != len(groups):
        raise ValueError(
            f"{len(seeds)} seeds for {len(groups)} tasks ({len(problems)} problems, batch={batch})"
        )
    tasks = [(stack(group, chains), len(group), seed) for group, seed in zip(groups, seeds, strict=True)]
    options = {"chains": chains, "max_batch": max_batch}
    if backend == "local":
        parts = [
            run_task(sampler, prior, problem, num_samples, size, seed, **options)
            for problem, size, seed in tasks
        ]
    elif backend == "ray":
        parts = run_ray(tasks, sampler, prior, num_samples, workers, threads, options)
    else:
        if not getattr(sampler, "shardable", False):
            raise ValueError(
                f"backend='torch' splits particles; {type(sampler).__name__} is not a particle sampler"
            )
        parts = run_torch(tasks, sampler, prior, num_samples, workers or 2, threads, options)
    return [result for part in parts for result in part]


def stack(problems: list[InverseProblem], chains: int) -> InverseProblem:
    """The problems of one task as one problem with one ``y`` per chain (or the single problem as is)."""
    if len(problems) == 1:
        return problems[0]
    first = problems[0]
    if any(p.operator is not first.operator or p.noise is not first.noise for p in problems):
        raise ValueError(
            "problems batched in one task must share the operator and noise objects; use batch=1"
        )
    if any(p.batched for p in problems):
        raise ValueError("problems batched in one task must each hold one measurement; use batch=1")
    y = torch.stack([p.y for p in problems]).repeat_interleave(chains, 0)
    return InverseProblem(first.operator, first.noise, y)


def run_task(sampler, prior, problem, num_samples, size, seed, *, chains, max_batch, group=None):
    """One task: one batched call, split into ``size`` results of ``chains`` chains."""
    result = sampler.sample(
        problem,
        prior,
        num_samples,
        chains=size * chains,
        seed=seed,
        progress=False,
        max_batch=max_batch,
        group=group,
    )
    return split_chains(result, size)


def split_chains(result: PosteriorSamples, parts: int) -> list[PosteriorSamples]:
    """``parts`` results of consecutive chains, one per problem of a task (:func:`stack`: the chains of a
    part share its measurement). Per-chain trace entries (``(steps, chains, ...)``) are split; the
    others are shared."""
    if parts == 1:
        return [result]
    B, c = result.chains, result.chains // parts

    def per_chain(value, i):
        if value.dim() >= 2 and value.shape[1] == B:
            return value[:, i * c : (i + 1) * c]
        return value

    return [
        PosteriorSamples(
            samples=result.samples[i * c : (i + 1) * c],
            log_weights=None if result.log_weights is None else result.log_weights[i * c : (i + 1) * c],
            nfe=result.nfe,
            grad_evals=result.grad_evals,
            wall_time=result.wall_time / parts,
            trace={k: per_chain(v, i) for k, v in result.trace.items()},
            sample_stats={k: v[i * c : (i + 1) * c] for k, v in result.sample_stats.items()},
            sampler=result.sampler,
            config=result.config,
            kind=result.kind,
            verdict=result.verdict,
            shared_measurement=True,
        )
        for i in range(parts)
    ]


# -- Ray ------------------------------------------------------------------------------------------
def run_ray(tasks, sampler, prior, num_samples, workers, threads, options):
    try:
        import ray
    except ImportError as err:
        raise ImportError("backend='ray' needs Ray: pip install 'posterior[ray]'") from err
    if not ray.is_initialized():
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_ray_task)
    shared = ray.put((sampler, prior))
    refs = [
        remote.remote(shared, problem, num_samples, size, seed, threads, options)
        for problem, size, seed in tasks
    ]
    return ray.get(refs)


def _ray_task(shared, problem, num_samples, size, seed, threads, options):
    torch.set_num_threads(threads)
    sampler, prior = shared
    return run_task(sampler, prior, problem, num_samples, size, seed, **options)


# -- torch.distributed ------------------------------------------------------------------------------
def run_torch(tasks, sampler, prior, num_samples, workers, threads, options):
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return [
            run_task(sampler, prior, problem, num_samples, size, seed, group=dist.group.WORLD, **options)
            for problem, size, seed in tasks
        ]
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="posterior-torch-") as folder:
        args = (folder, free_port(), workers, threads, tasks, sampler, prior, num_samples, options)
        mp.spawn(_torch_worker, args=args, nprocs=workers, join=True)
        return [
            [PosteriorSamples.load(Path(folder) / f"{k}-{i}.safetensors") for i in range(size)]
            for k, (_, size, _) in enumerate(tasks)
        ]


def free_port() -> int:
    """A TCP port on this machine that nothing listens on (for the processes' rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torch_worker(rank, folder, port, workers, threads, tasks, sampler, prior, num_samples, options):
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=workers)
    try:
        for k, (problem, size, seed) in enumerate(tasks):
            parts = run_task(
                sampler, prior, problem, num_samples, size, seed, group=dist.group.WORLD, **options
            )
            if rank == 0:
                for i, part in enumerate(parts):
                    part.save(Path(folder) / f"{k}-{i}.safetensors")
        dist.barrier()  # no process tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: with torch 2.13 a gloo process aborted there ("terminate called
    # without an active exception") in about 1 of 30 runs, after its work was done and saved.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
