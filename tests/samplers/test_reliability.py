"""Checkpoints, resume after a kill, NaN guards and micro-batching, for every sampler."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import operators as ops
import posterior as post

# Shared by this test and the subprocess that is killed: the problem and the samplers, by name.
CASES = textwrap.dedent(
    """
    import torch
    import operators as ops
    import posterior as post
    from posterior.priors import GaussianMixture

    def mixture():
        prior = GaussianMixture.grid(2, seed=0)
        g = torch.Generator().manual_seed(1000)
        A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=torch.float64) / 2**0.5)
        noise = ops.GaussianNoise(0.5)
        return prior, post.InverseProblem(A, noise, noise.sample(A(prior.sample(2, seed=1)), g))

    def digits():
        prior = post.priors.pretrained("digits")
        A = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
        noise = ops.GaussianNoise(0.1)
        y = noise.sample(A(prior.sample(1, steps=4, seed=0)), torch.Generator().manual_seed(1))
        return prior, post.InverseProblem(A, noise, y.expand(2, *y.shape[1:]).contiguous())

    S = post.samplers
    CASES = {
        "dps": (mixture, lambda: S.DPS(steps=12, step_size=0.5, corrector_steps=1)),
        "dps-digits": (digits, lambda: S.DPS(steps=10)),
        "dds": (mixture, lambda: S.DDS(steps=12)),
        "joint": (mixture, lambda: S.JointPosterior(steps=12)),
        "lml": (mixture, lambda: S.LevenbergMarquardtLangevin(steps=12, corrector_steps=1, kappa=0.5)),
        "dlg": (mixture, lambda: S.DenoisingLangevinGibbs(burn_in=4, thin=2, init_steps=3, ode_steps=2, levels=8)),
        "reddiff": (mixture, lambda: S.RedDiff(steps=12)),
        "reddiff-gaussian": (mixture, lambda: S.RedDiff(steps=12, mode="gaussian")),
        "afdps": (mixture, lambda: S.AFDPS(steps=12, max_bisections=2, ess_threshold=0.9)),
        "tds": (mixture, lambda: S.TDS(steps=12)),
        "mcgdiff": (mixture, lambda: S.MCGdiff(steps=12)),
    }

    def run(name, **kwargs):
        problem_of, sampler_of = CASES[name]
        prior, problem = problem_of()
        return sampler_of().sample(problem, prior, 8, chains=2, seed=3, progress=False, **kwargs)
    """
)

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    torch.set_num_threads(1)
    name, path, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def callback(step, state):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run(name, checkpoint=path, checkpoint_every=3, callback=callback)
    """
)


def cases():
    namespace = {}
    exec(CASES, namespace)
    return namespace


def same(a: post.PosteriorSamples, b: post.PosteriorSamples) -> None:
    assert torch.equal(a.samples, b.samples)
    assert (a.log_weights is None) == (b.log_weights is None)
    if a.log_weights is not None:
        assert torch.equal(a.log_weights, b.log_weights)
    assert (a.nfe, a.grad_evals) == (b.nfe, b.grad_evals)
    assert a.trace.keys() == b.trace.keys()
    for key in a.trace:
        assert torch.equal(a.trace[key], b.trace[key]), key


@pytest.mark.parametrize("name", sorted(cases()["CASES"]))
def test_a_run_killed_midway_resumes_bit_identically(name, tmp_path):
    """The subprocess checkpoints every 3 steps and is SIGKILLed after step 7 (its last checkpoint
    holds 6 steps); resuming from the file gives exactly the uninterrupted run."""
    namespace = cases()
    path = tmp_path / "run.pt"
    script = tmp_path / "killed.py"
    script.write_text(CASES + KILLER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, str(script), name, str(path), "7"], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert torch.load(path, weights_only=True)["step"] == 6
    steps = []
    resumed = namespace["run"](name, resume=path, callback=lambda i, state: steps.append(i))
    assert steps[0] == 6  # it continued; it did not start again
    same(resumed, namespace["run"](name))


def test_resume_refuses_another_run(tmp_path):
    namespace = cases()
    path = tmp_path / "run.pt"
    namespace["run"]("dps", checkpoint=path, checkpoint_every=4)
    prior, problem = namespace["mixture"]()
    with pytest.raises(ValueError, match="setting steps is 12, this run's is 13"):
        post.samplers.DPS(steps=13).sample(problem, prior, 8, chains=2, seed=3, progress=False, resume=path)
    with pytest.raises(ValueError, match="num_samples"):
        post.samplers.DPS(steps=12, step_size=0.5, corrector_steps=1).sample(
            problem, prior, 4, chains=2, seed=3, progress=False, resume=path
        )
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a posterior checkpoint"):
        namespace["run"]("dps", resume=path)
    with pytest.raises(ValueError, match="split across processes"):
        post.samplers.AFDPS(steps=4).sample(problem, prior, 4, chains=2, group=object(), checkpoint=path)
    with pytest.raises(ValueError, match="cannot split"):
        post.samplers.DPS(steps=4).sample(problem, prior, 4, chains=2, group=object())
    with pytest.raises(ValueError, match="nothing to checkpoint"):
        post.samplers.ExactPosterior().sample(problem, prior, 4, chains=2, checkpoint=tmp_path / "exact.pt")


class Exploding:
    """A prior whose denoiser returns NaN below a noise level (a stand-in for a diverging network)."""

    def __new__(cls, prior, below: float):
        class _Prior(type(prior)):
            def denoise(self, x, sigma):
                out = super().denoise(x, sigma)
                return out * float("nan") if float(torch.as_tensor(sigma).max()) < below else out

        exploding = object.__new__(_Prior)
        exploding.__dict__.update(prior.__dict__)
        return exploding


@pytest.mark.parametrize("name", ["dps", "afdps", "reddiff"])
def test_nan_stops_naming_sampler_step_sigma_and_saves_the_last_good_state(name, tmp_path):
    namespace = cases()
    problem_of, sampler_of = namespace["CASES"][name]
    prior, problem = problem_of()
    sampler = sampler_of()
    path = tmp_path / "last.pt"
    with pytest.raises(
        FloatingPointError, match=rf"{type(sampler).__name__}: .* at step \d+ \(sigma="
    ) as err:
        sampler.sample(problem, Exploding(prior, 1.0), 8, chains=2, seed=3, progress=False, checkpoint=path)
    saved = torch.load(path, weights_only=True)
    assert str(path) in str(err.value) and f"(step {saved['step']})" in str(err.value)
    assert all(bool(torch.isfinite(t).all()) for t in saved["state"].values() if isinstance(t, torch.Tensor))


def test_non_finite_draws_and_impossible_weights_stop_the_run(tmp_path):
    """The two other guards: draws that overflow after a step (DPS with an absurd step size) and SMC
    runs whose every particle has zero weight (a likelihood that is -inf everywhere)."""
    prior, problem = cases()["mixture"]()
    with pytest.raises(FloatingPointError, match=r"DPS: non-finite values at step 0 \(sigma="):
        post.samplers.DPS(steps=12, guidance="likelihood", step_size=1e308).sample(
            problem, prior, 4, chains=2, progress=False, checkpoint=tmp_path / "a.pt"
        )

    class Impossible(ops.LaplaceNoise):
        def log_prob(self, y, Ax):
            return Ax.reshape(Ax.shape[0], -1).sum(1) * 0 - math.inf

    impossible = post.InverseProblem(problem.operator, Impossible(0.5), problem.y)
    with pytest.raises(FloatingPointError, match="AFDPS: every particle of a run has zero weight at step 0"):
        post.samplers.AFDPS(steps=12, tempering_scale=1.0).sample(
            impossible, prior, 4, chains=2, progress=False
        )


def test_nan_without_checkpoint_names_a_temporary_file():
    prior, problem = cases()["mixture"]()
    with pytest.raises(FloatingPointError, match=r"saved in (\S+)") as err:
        post.samplers.DPS(steps=12).sample(problem, Exploding(prior, 1.0), 4, chains=2, progress=False)
    path = Path(str(err.value).rsplit("saved in ", 1)[1])
    assert torch.load(path, weights_only=True)["step"] > 0
    path.unlink()


@pytest.mark.parametrize("name", ["dps-digits", "tds", "afdps"])
def test_micro_batches_give_the_same_draws(name):
    """``max_batch`` splits the network's batch (and the backpropagation through it); the draws agree
    with one batch up to float round-off of the network on a different batch size."""
    run = cases()["run"]
    whole, split = run(name), run(name, max_batch=3)
    assert (whole.nfe, whole.grad_evals) == (split.nfe, split.grad_evals)
    torch.testing.assert_close(split.samples, whole.samples, rtol=1e-4, atol=1e-4)


def test_micro_batched_vjp_matches_the_full_one():
    prior = post.priors.pretrained("digits")
    counted = post.samplers.base.CountingPrior(prior, max_batch=2)
    whole = post.samplers.base.CountingPrior(prior)
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    sigma = torch.linspace(0.5, 2.0, 5)
    for c in (counted, whole):
        out = c.denoise_vjp(x, sigma, lambda x0: (x0**2).sum((1, 2, 3)))
        c.result = out
    for a, b in zip(counted.result, whole.result, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="max_batch"):
        post.samplers.base.CountingPrior(prior, max_batch=0)


def test_sigma_outside_the_trained_range_warns():
    prior = post.priors.pretrained("digits")
    with pytest.warns(UserWarning, match="trained range"):
        prior.denoise(torch.zeros(1, 1, 16, 16), prior.sigma_max * 2)


def test_fingerprint_sees_tuple_hyperparameters():
    """A per-source step size (a tuple) is part of the configuration a checkpoint must match."""
    from posterior.samplers.loop import fingerprint

    prior, problem = cases()["mixture"]()
    a, b = (
        fingerprint(post.samplers.JointPosterior(step_size=s), problem, prior, 4, 2, "0")["config"]
        for s in ((1.0, 2.0), (1.0, 3.0))
    )
    assert a != b
