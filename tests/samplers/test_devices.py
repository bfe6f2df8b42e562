"""Every sampler on every device and dtype without code changes: CPU always, CUDA when present."""

import pytest
import torch

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]
S = post.samplers
SAMPLERS = {
    "dps": lambda: S.DPS(steps=8),
    "dds": lambda: S.DDS(steps=8),
    "reddiff": lambda: S.RedDiff(steps=8),
    "reddiff-gaussian": lambda: S.RedDiff(steps=8, mode="gaussian"),
    "afdps": lambda: S.AFDPS(steps=8),
    "tds": lambda: S.TDS(steps=8),
    "mcgdiff": lambda: S.MCGdiff(steps=8),
    "lml": lambda: S.LevenbergMarquardtLangevin(steps=8),
    "dlg": lambda: S.DenoisingLangevinGibbs(burn_in=2, thin=1, levels=6, init_steps=2, ode_steps=1),
    "joint": lambda: S.JointPosterior(steps=8),
    "exact": lambda: S.ExactPosterior(),
}


def mixture_problem(dtype, device):
    prior = GaussianMixture.grid(2, seed=0).to(dtype=dtype, device=device)
    g = torch.Generator().manual_seed(1000)
    A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=dtype).to(device) / 2**0.5)
    noise = ops.GaussianNoise(0.5)
    y = A(prior.sample(1, seed=1).to(device))
    return prior, post.InverseProblem(A, noise, y[0])


def check(result, dtype, device):
    assert result.samples.dtype == dtype and result.samples.device.type == device
    assert bool(torch.isfinite(result.samples).all())
    if result.log_weights is not None:
        assert result.log_weights.dtype == torch.float64 and result.log_weights.device.type == device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_runs_in_the_problems_dtype_and_device(name, dtype, device):
    prior, problem = mixture_problem(dtype, device)
    result = SAMPLERS[name]().sample(problem, prior, 8, chains=2, seed=0, progress=False)
    check(result, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["dps", "afdps", "reddiff"])
def test_network_prior_in_float64(name, device):
    prior = post.priors.pretrained("digits", device=device, dtype=torch.float64)
    operator = ops.Inpainting.box((1, 16, 16), 0, 0, 8, 16)
    y = operator(prior.sample(1, steps=4, seed=0))[0]
    result = SAMPLERS[name]().sample(
        post.InverseProblem(operator, ops.GaussianNoise(0.1), y), prior, 2, seed=0, progress=False
    )
    check(result, torch.float64, device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_a_cpu_generator_drives_a_cuda_run_like_a_cpu_run():
    """The draws come from the generator's device, so a CPU seed gives CUDA samples close to the CPU ones."""
    results = []
    for device in ("cpu", "cuda"):
        prior, problem = mixture_problem(torch.float64, device)
        results.append(
            S.DPS(steps=8).sample(problem, prior, 8, seed=torch.Generator().manual_seed(0), progress=False)
        )
    torch.testing.assert_close(results[1].samples.cpu(), results[0].samples, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["dps", "reddiff", "afdps", "dlg"])
def test_resume_on_the_device(name, device, tmp_path):
    """A run stopped after its first checkpoint and resumed on the same device gives the same draws
    (tensors come back where they were saved; the generator state is a CPU tensor)."""
    prior, problem = mixture_problem(torch.float64, device)
    path = tmp_path / "run.pt"
    sampler = SAMPLERS[name]()

    def stop(step, state):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sampler.sample(
            problem,
            prior,
            8,
            chains=2,
            seed=0,
            progress=False,
            checkpoint=path,
            checkpoint_every=3,
            callback=stop,
        )
    resumed = sampler.sample(problem, prior, 8, chains=2, seed=0, progress=False, resume=path)
    whole = sampler.sample(problem, prior, 8, chains=2, seed=0, progress=False)
    assert resumed.samples.device.type == device and torch.equal(resumed.samples, whole.samples)
