"""The diffusers adapter: a tiny UNet2DModel and DDPMScheduler saved locally, reloaded as a prior.

The check is the conversion itself: at sigma = sqrt((1 - abar_k) / abar_k) from the scheduler's own
``alphas_cumprod``, the prior must call the UNet at timestep k on x / sqrt(1 + sigma^2) and turn
its output into x0 by the prediction type's formula.
"""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from posterior.priors import NetworkPrior  # noqa: E402
from posterior.priors.diffusers_adapter import from_diffusers  # noqa: E402


def _unet(out_channels: int = 1):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


@pytest.fixture(scope="module")
def unet():
    return _unet()


def _save(folder, unet, scheduler, pipeline=False):
    if pipeline:
        unet.save_pretrained(folder / "unet")
        scheduler.save_pretrained(folder / "scheduler")
        index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}
        index["scheduler"] = ["diffusers", type(scheduler).__name__]
        (folder / "model_index.json").write_text(json.dumps(index))
    else:
        unet.save_pretrained(folder)
        scheduler.save_pretrained(folder)


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoise_matches_the_unet_at_the_scheduler_timestep(tmp_path, unet, beta_schedule, prediction_type):
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=100,
        beta_start=2e-4,
        beta_end=0.03,
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
    )
    _save(tmp_path, unet, scheduler)
    prior = from_diffusers(tmp_path)
    assert isinstance(prior, NetworkPrior)
    assert prior.event_shape == (1, 8, 8)
    assert prior.parametrization == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]

    steps = torch.tensor([0, 7, 50, 98])
    abar = scheduler.alphas_cumprod[steps].to(torch.float64)
    sigma = torch.sqrt((1 - abar) / abar)
    torch.testing.assert_close(prior.schedule.t(sigma), steps.to(torch.float64), atol=1e-3, rtol=0)
    assert prior.sigma_min == pytest.approx(float(torch.sqrt((1 - abar[0]) / abar[0])), rel=1e-4)

    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    sigma = sigma.float()
    with torch.no_grad():
        got = prior.denoise(x, sigma)
        s = sigma.reshape(-1, 1, 1, 1)
        alpha = 1 / torch.sqrt(1 + s**2)  # sqrt(abar)
        z = alpha * x  # the VP input
        out = unet(z, steps.float()).sample
    if prediction_type == "epsilon":
        expected = x - s * out
    elif prediction_type == "v_prediction":  # v = alpha eps - sqrt(1 - abar) x0
        expected = alpha * z - torch.sqrt(1 - alpha**2) * out
    else:
        expected = out
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_linear_schedule_matches_the_scheduler_table(tmp_path, unet):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)  # Ho et al. 2020 defaults
    _save(tmp_path, unet, scheduler)
    prior = from_diffusers(tmp_path)
    abar = scheduler.alphas_cumprod.to(torch.float64)
    sigma = torch.sqrt((1 - abar) / abar)
    torch.testing.assert_close(prior.schedule.log_sigmas.exp(), sigma, rtol=1e-4, atol=0)
    assert prior.sigma_max == pytest.approx(float(sigma[-1]), rel=1e-4)


def test_pipeline_layout_dtype_and_gradients(tmp_path, unet):
    _save(tmp_path, unet, diffusers.DDPMScheduler(num_train_timesteps=50), pipeline=True)
    prior = from_diffusers(tmp_path, dtype=torch.float64)
    assert prior.dtype == torch.float64 and prior.device == torch.device("cpu")
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    score = prior.score(x, 0.5)
    assert score.shape == x.shape and score.dtype == torch.float64
    (g,) = torch.autograd.grad(score.sum(), x)  # samplers such as DPS differentiate through the network
    assert bool(torch.isfinite(g).all())
    samples = prior.sample(2, steps=3, seed=0)
    assert samples.shape == (2, 1, 8, 8) and bool(torch.isfinite(samples).all())


def test_learned_variance_output_is_sliced(tmp_path):
    unet = _unet(out_channels=2)
    _save(tmp_path, unet, diffusers.DDPMScheduler(num_train_timesteps=50, variance_type="learned_range"))
    prior = from_diffusers(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert prior.denoise(x, 0.5).shape == (2, 1, 8, 8)


def test_unsupported_configs_raise(tmp_path, unet):
    _save(tmp_path, unet, diffusers.DDPMScheduler(beta_schedule="scaled_linear"))
    with pytest.raises(ValueError, match="beta_schedule 'scaled_linear'"):
        from_diffusers(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    config.update(beta_schedule="linear", prediction_type="flow")
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        from_diffusers(tmp_path / "missing")
    (tmp_path / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        from_diffusers(tmp_path)
