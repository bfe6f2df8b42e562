import pytest
import torch

# Small tensors run 10-50x slower when torch threads are oversubscribed on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def overlapping_problem():
    """A factory: ``overlapping_problem(rows=1)`` is an overlapping 10-mode mixture prior in d = 8 (means
    of scale 2, unit covariances), a random ``(rows, 8)`` operator and ``sigma_y = 0.5``, with ``y``
    simulated from a prior draw: ``(prior, InverseProblem)``, as in ``benchmarks/gmm.py``."""
    import operators as ops
    import posterior as post
    from posterior.priors import GaussianMixture

    def make(rows: int = 1):
        prior = GaussianMixture.random(8, num_components=10, separation=2.0, std=1.0, seed=0)
        g = torch.Generator().manual_seed(1000)
        A = ops.Matrix(torch.randn(rows, 8, generator=g, dtype=torch.float64) / 8**0.5)
        noise = ops.GaussianNoise(0.5)
        y = noise.sample(A(prior.sample(1, seed=2000)), g)[0]
        return prior, post.InverseProblem(A, noise, y)

    return make
