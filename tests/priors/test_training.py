"""Training machinery: seeded, checkpointed, resumable bit-identically, loadable."""

import torch

from posterior.priors import pretrained
from posterior.priors.training import train_noise_classifier, train_prior


def test_resume_is_bit_identical(tmp_path):
    """4 steps straight vs 2 steps, then resume to 4: the same weights (the checkpoint holds model,
    EMA, optimiser and data-RNG state)."""
    straight = train_prior("phantoms", tmp_path / "a", steps=4, checkpoint_every=2, progress=False)
    train_prior("phantoms", tmp_path / "b", steps=2, checkpoint_every=2, progress=False)
    resumed = train_prior(
        "phantoms", tmp_path / "b", steps=4, checkpoint_every=2, resume=True, progress=False
    )
    a, b = pretrained(straight), pretrained(resumed)
    for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True):
        assert torch.equal(p, q)
    # a different seed gives different weights
    other = pretrained(train_prior("phantoms", tmp_path / "c", steps=4, seed=1, progress=False))
    assert not all(torch.equal(p, q) for p, q in zip(a.net.parameters(), other.net.parameters(), strict=True))


def test_classifier_trains_and_loads(tmp_path):
    from posterior.priors import noise_classifier

    path = train_noise_classifier("phantoms", tmp_path, steps=3, progress=False)
    classifier = noise_classifier(path)
    x = torch.rand(5, 1, 32, 32)
    assert classifier.log_probs(x).shape == (5, 40)
    assert torch.allclose(classifier.log_probs(x).exp().sum(1), torch.ones(5))
    assert set(classifier.held_out_accuracy) == {"exact", "within_one_level", "rms_log_sigma_error"}


def test_cli_train(tmp_path, capsys):
    from posterior.cli import main

    main(
        [
            "train",
            "phantoms",
            "--out",
            str(tmp_path),
            "--steps",
            "2",
            "--classifier-steps",
            "2",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "prior written to" in out and "classifier written to" in out
    assert (tmp_path / "phantoms.safetensors").exists() and (tmp_path / "phantoms-noise.safetensors").exists()


def test_gaussian_residual_network_starts_as_the_fitted_gaussian_denoiser():
    """The head is zero-initialised, so before training the "edm-gaussian" prior is exactly the MMSE
    denoiser of the Gaussian fitted to the data, at every sigma (checked against the analytic prior)."""
    from posterior.priors import Gaussian
    from posterior.priors.training import RECIPES, build_prior
    from posterior.priors.unet import GaussianResidualUNet

    x0 = RECIPES["digits"].batch(500, torch.Generator().manual_seed(0)).double()
    net = GaussianResidualUNet((1, 16, 16)).double()
    net.fit_gaussian(x0)
    prior = build_prior(net, RECIPES["digits"])
    flat = x0.reshape(500, -1)
    exact = Gaussian(
        flat.mean(0).reshape(1, 16, 16), torch.cov(flat.T) + 1e-6 * torch.eye(256, dtype=torch.float64)
    )
    x = x0[:8] + torch.randn(8, 1, 16, 16, dtype=torch.float64)
    for sigma in (0.01, 1.0, 50.0):
        assert torch.allclose(prior.denoise(x, sigma), exact.denoise(x, sigma), atol=1e-8)
