import math

import pytest
import torch

from posterior import metrics
from posterior.priors import GaussianMixture


def test_sliced_wasserstein_of_a_shift():
    # Shifting every sample by c moves each 1-D projection theta^T x by theta^T c, so SW1 = E|theta^T c|.
    # For d = 2 and c = (1, 0): E|cos U| = 2 / pi over directions uniform on the circle; 1000 directions
    # give a Monte-Carlo error of std(|cos|) / sqrt(1000) ~ 0.01.
    x = torch.randn(500, 2, dtype=torch.float64)
    sw = metrics.sliced_wasserstein(x, x + torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert sw == pytest.approx(2 / math.pi, abs=0.04)
    assert metrics.sliced_wasserstein(x, x) == 0.0


@pytest.mark.parametrize("n, m", [(30, 10), (100, 7), (55, 200)])
def test_sliced_wasserstein_unequal_sizes_matches_repetition(n, m):
    """Repeating both sets up to lcm(n, m) samples leaves the empirical measures unchanged and uses the
    exact equal-size path: the merged-quantile path must agree to rounding (an off-by-one quantile
    index, e.g. from ceil(0.07 * 100) = 8, shows up as a ~0.2% difference)."""
    x = torch.randn(n, 3, dtype=torch.float64)
    y = torch.randn(m, 3, dtype=torch.float64)
    lcm = math.lcm(n, m)
    reference = metrics.sliced_wasserstein(x.repeat(lcm // n, 1), y.repeat(lcm // m, 1))
    assert metrics.sliced_wasserstein(x, y) == pytest.approx(reference, rel=1e-12)


def test_sliced_wasserstein_is_seeded_and_checks_shapes():
    x, y = torch.randn(50, 4), torch.randn(50, 4)
    assert metrics.sliced_wasserstein(x, y, seed=3) == metrics.sliced_wasserstein(x, y, seed=3)
    with pytest.raises(ValueError, match="different event sizes"):
        metrics.sliced_wasserstein(x, torch.randn(50, 5))


def test_mode_weight_tv():
    mixture = GaussianMixture.grid(2, seed=0)
    exact = mixture.sample(20000, seed=0)
    # TV of an exact set is the multinomial error: ~ 0.5 * sum_k sqrt(w_k / n) <= 0.5 * sqrt(K / n) = 0.018
    assert metrics.mode_weight_tv(exact, mixture) < 0.03
    one_mode = mixture.means[:1].expand(100, -1)
    expected = 0.5 * (float(1 - mixture.weights[0]) + float(mixture.weights[1:].sum()))
    assert metrics.mode_weight_tv(one_mode, mixture) == pytest.approx(expected, abs=1e-6)


def test_mean_and_covariance_errors():
    """Exact draws: errors within 4 standard errors. Mean: SE of the norm ~ sqrt(tr(C) / n). Covariance
    (Gaussian formula; the grid mixture has lighter tails than a Gaussian, so it is conservative):
    E ||S - C||_F^2 = (tr(C)^2 + tr(C^2)) / n."""
    mixture = GaussianMixture.grid(3, seed=0)
    n = 20000
    x = mixture.sample(n, seed=1)
    mean, cov = mixture.mean(), mixture.covariance()
    mean_bound = 4 * (torch.trace(cov) / n).sqrt() / mean.norm()
    cov_bound = (
        4 * ((torch.trace(cov) ** 2 + torch.trace(cov @ cov)) / n).sqrt() / torch.linalg.matrix_norm(cov)
    )
    assert metrics.mean_error(x, mean) < float(mean_bound)
    assert metrics.covariance_error(x, cov) < float(cov_bound)
    assert metrics.mean_error(x + 10, mean) > 1


def test_psnr():
    ref = torch.zeros(4, 4)
    assert metrics.psnr(ref + 0.1, ref) == pytest.approx(20.0)


def test_ssim_matches_scikit_image_and_orders_degradations():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 40, 48, generator=g, dtype=torch.float64)
    slightly = (a + 0.05 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    badly = (a + 0.3 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    reference = skimage_metrics.structural_similarity(
        a[0].numpy(),
        slightly[0].numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert metrics.ssim(slightly[0], a[0]) == pytest.approx(reference, abs=1e-10)
    assert metrics.ssim(a, a) == pytest.approx(1.0) and metrics.ssim(badly, a) < metrics.ssim(slightly, a)


def test_standard_error_of_the_mean():
    assert metrics.standard_error(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(metrics.standard_error(torch.tensor([1.0])))
