"""Resuming refuses a checkpoint of any other run, naming the first field that differs."""

import functools

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture
from posterior.samplers.loop import digest, mismatch


def setup(sigma=0.5, matrix_seed=1000, prior_seed=0, dtype=torch.float64, y_shift=0.0):
    prior = GaussianMixture.grid(2, seed=prior_seed).to(dtype=dtype)
    g = torch.Generator().manual_seed(matrix_seed)
    A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=dtype) / 2**0.5)
    y = torch.tensor([0.7 + y_shift], dtype=dtype)
    return prior, post.InverseProblem(A, ops.GaussianNoise(sigma), y)


def run(path, key, sampler=None, num_samples=4, chains=2, seed=3, **changes):
    """The reference run (AFDPS, 6 steps, 2 runs of 4 particles, seed 3), with ``changes``, writing a
    checkpoint at step 4 to ``path`` (``key="checkpoint"``) or resuming from it (``key="resume"``)."""
    prior, problem = setup(**changes)
    sampler = sampler or post.samplers.AFDPS(steps=6)
    files = {key: path, "checkpoint_every": 4}
    return sampler.sample(problem, prior, num_samples, chains=chains, seed=seed, progress=False, **files)


CHANGES = {  # what changes -> the phrase the refusal must contain
    "noise sigma": ({"sigma": 0.6}, "its noise differs"),
    "operator": ({"matrix_seed": 7}, "its operator differs"),
    "prior": ({"prior_seed": 3}, "its prior differs"),
    "measurement": ({"y_shift": 0.1}, "its y differs"),
    "seed": ({"seed": 123}, "its seed is 3, this run's is 123"),
    "seed None": ({"seed": None}, "its seed is 3, this run's is random"),
    "num_samples": ({"num_samples": 5}, "its num_samples is 4, this run's is 5"),
    "chains": ({"chains": 3}, "its chains is 2, this run's is 3"),
    "dtype": ({"dtype": torch.float32}, "its dtype is torch.float64, this run's is torch.float32"),
    "setting": (
        {"sampler": post.samplers.AFDPS(steps=6, rho=5.0)},
        "its setting rho is 7.0, this run's is 5.0",
    ),
    "sampler": ({"sampler": post.samplers.TDS(steps=6)}, "its sampler is AFDPS, this run's is TDS"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "run.pt"
    run(path, "checkpoint")
    return path


@pytest.mark.parametrize("case", CHANGES)
def test_resume_refuses_a_changed_run(case, checkpoint):
    changes, phrase = CHANGES[case]
    with pytest.raises(ValueError, match="was written by a different run") as err:
        run(checkpoint, "resume", **changes)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_resume_accepts_the_same_run_and_an_equal_rebuilt_problem(checkpoint):
    """Equal settings written differently (an int for a float, a rebuilt operator) are the same run."""
    resumed = run(checkpoint, "resume", sampler=post.samplers.AFDPS(steps=6, rho=7))
    prior, problem = setup()
    whole = post.samplers.AFDPS(steps=6).sample(problem, prior, 4, chains=2, seed=3, progress=False)
    assert torch.equal(resumed.samples, whole.samples)


def test_a_seed_generator_is_fingerprinted_by_its_state(tmp_path):
    path = tmp_path / "run.pt"
    run(path, "checkpoint", seed=torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="its seed is generator"):
        run(path, "resume", seed=torch.Generator().manual_seed(6))
    run(path, "resume", seed=torch.Generator().manual_seed(5))


def _matrix(scale):
    return ops.Matrix(torch.eye(2, dtype=torch.float64) * scale)


def _closure(scale):
    W = torch.eye(2, dtype=torch.float64) * scale
    return ops.Function(lambda x: x @ W.T, in_shape=(2,), out_shape=(2,))


def _scaled(x, W):
    return x @ W.T


DIGESTS = {  # case -> a builder of two objects from a parameter: equal parameters, equal digests
    "composition": lambda s: _matrix(1.0) @ _matrix(s),
    "sum": lambda s: _matrix(1.0) + _matrix(s) * 2,
    "list of operators": lambda s: [_matrix(1.0), _matrix(s)],
    "closure": _closure,
    "partial": lambda s: functools.partial(_scaled, W=torch.eye(2) * s),
    "builtin": lambda s: [torch.sin, torch.tanh][int(s) - 1],
    "stacked prior": lambda s: post.priors.StackedPrior(
        [GaussianMixture.grid(2, seed=0), GaussianMixture.grid(2, seed=int(s))]
    ),
}


@pytest.mark.parametrize("case", DIGESTS)
def test_digests_see_every_part_and_match_a_rebuild(case):
    """What the reviewer found: the second part of a composite was skipped (a freed temporary's address
    reused); closures, partials and builtins were hashed by type only."""
    build = DIGESTS[case]
    assert digest(build(1.0)) == digest(build(1.0))
    assert digest(build(1.0)) != digest(build(2.0))


def test_the_device_field_and_an_old_format_are_named():
    current = {"sampler": "AFDPS", "device": "cpu"}
    assert mismatch({"sampler": "AFDPS", "device": "cuda:0"}, current) == "its device is cuda:0, this run's is cpu"
    assert mismatch(dict(current), current) is None
