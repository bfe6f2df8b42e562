"""The particles of one SMC run split across processes (``torch.distributed``), for the SMC core.

Each process moves its own share of every run's particles with its own generator. Log-weights are
all-gathered each step (ESS, evidence, adaptive steps), and a resampling step draws ancestors from the
global weights with the generator shared by all processes, then all-gathers the particles so that
each process can take its slice of the new population. With one process every method is a no-op.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from posterior.problem import InverseProblem


class Shards:
    """The ``N`` particles of every run split evenly across the processes of a ``torch.distributed``
    group (``group=None``: one process, every method a no-op). Shard ``r`` holds particles
    ``r n, ..., (r + 1) n - 1`` of each run, ``n = N / size``; tensors of a shard are run-major,
    ``(B * n, ...)`` or ``(B, n)``."""

    def __init__(self, group, N: int):
        self.group, self.size, self.rank = group, 1, 0
        if group is not None:
            self.size, self.rank = dist.get_world_size(group), dist.get_rank(group)
        if N % self.size:
            raise ValueError(f"num_samples={N} does not split evenly across {self.size} processes")
        self.n = N // self.size

    def generator(self, generator: torch.Generator) -> torch.Generator:
        """The shard's own generator for its moves (``generator`` itself for one process)."""
        if self.size == 1:
            return generator
        seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        return torch.Generator(device=generator.device).manual_seed(seed + self.rank)

    def rows(self, problem, B: int):
        """The problem restricted to this shard's particles (a batched ``y`` has one row per particle)."""
        if self.size == 1 or not problem.batched:
            return problem
        y = problem.y.reshape(B, self.size * self.n, *problem.y.shape[1:])
        return InverseProblem(problem.operator, problem.noise, self.local(y).reshape(-1, *y.shape[2:]))

    def local(self, t: Tensor) -> Tensor:
        """This shard's slice of a ``(B, N, ...)`` tensor."""
        return t[:, self.rank * self.n : (self.rank + 1) * self.n]

    def gather(self, t: Tensor) -> Tensor:
        """``(B, n, ...)`` from every shard -> ``(B, N, ...)`` on every shard."""
        if self.size == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, 1)

    def all_finite(self, t: Tensor) -> bool:
        """Whether ``t`` is finite on every shard (the same answer on all of them)."""
        finite = torch.isfinite(t).all().to(torch.int32).reshape(1)
        if self.size > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN, group=self.group)
        return bool(finite)

    def gather_rows(self, t: Tensor, B: int) -> Tensor:
        """``(B * n, ...)`` from every shard -> ``(B * N, ...)``, run-major."""
        if self.size == 1:
            return t
        return self.gather(t.reshape(B, self.n, *t.shape[1:])).reshape(-1, *t.shape[1:])
