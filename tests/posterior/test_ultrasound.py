"""Ultrasound RF simulator: shapes, companding, envelope, cyst contrast, haze structure, gCNR, patches.

Thresholds are calibrated on ``ultrasound_frames(4, seed=0)`` (default 128 lines x 512 samples)
with margins; the measured values are quoted in each test.
"""

import math

import pytest
import torch

import operators as ops
from operators.ultrasound import compand, compose, expand
from posterior.data.ultrasound import (
    UltrasoundConfig,
    bmode,
    contrast_db,
    envelope,
    gcnr,
    ks_statistic,
    scan_convert,
    ultrasound_frames,
    ultrasound_patches,
)

torch.set_num_threads(1)
N, LINES, SAMPLES = 4, 128, 512
RF_KEYS = ("tissue", "haze", "hazy")
MASK_KEYS = ("cyst_mask", "background_mask", "blood_mask", "wall_mask")


@pytest.fixture(scope="module")
def frames():
    return ultrasound_frames(N, seed=0)


@pytest.fixture(scope="module")
def envelopes(frames):
    return {k: envelope(expand(frames[k][:, 0])) for k in ("tissue", "hazy")}


def test_shapes_dtypes_and_ranges(frames):
    for k in (*RF_KEYS, "echogenicity"):
        assert frames[k].shape == (N, 1, SAMPLES, LINES) and frames[k].dtype == torch.float32
        assert bool(torch.isfinite(frames[k]).all())
    for k in RF_KEYS:
        assert float(frames[k].abs().max()) <= 1.0
    for k in MASK_KEYS:
        assert frames[k].shape == (N, 1, SAMPLES, LINES) and frames[k].dtype == torch.bool
        assert bool(frames[k].flatten(1).any(1).all()), f"{k} is empty in some frame"
    assert not bool((frames["cyst_mask"] & frames["background_mask"]).any())
    assert frames["wall_depth"].shape == (N,)
    assert float(frames["wall_depth"].min()) > 0.01 and float(frames["wall_depth"].max()) < 0.03
    assert float(frames["echogenicity"][frames["cyst_mask"]].max()) == -80.0


def test_compand_expand_are_exact_inverses():
    x = torch.linspace(-1, 1, 10001, dtype=torch.float64)
    torch.testing.assert_close(expand(compand(x)), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(compand(expand(x)), x, atol=1e-12, rtol=0)
    x32 = x.float()  # measured max error 3e-7 in float32
    assert float((expand(compand(x32)) - x32).abs().max()) < 1e-6
    assert float((compand(expand(x32)) - x32).abs().max()) < 1e-6
    assert (
        float(compand(torch.tensor(1.0))) == pytest.approx(1.0) and float(compand(torch.tensor(0.0))) == 0.0
    )
    assert float(compand(torch.tensor(0.01))) > 0.2  # small amplitudes are boosted


def test_hazy_is_the_companded_linear_sum(frames):
    # float32 round trip through the companded tissue and haze: measured error 1.4e-6
    y = compose(frames["tissue"], frames["haze"], gamma=1.0)
    torch.testing.assert_close(y, frames["hazy"], atol=1e-5, rtol=0)
    y2 = ultrasound_frames(1, seed=0, gamma=2.0)["hazy"]
    torch.testing.assert_close(
        y2, compose(frames["tissue"][:1], frames["haze"][:1], gamma=2.0), atol=1e-5, rtol=0
    )


def test_envelope_of_a_pure_tone_is_constant():
    n = torch.arange(512, dtype=torch.float64)
    periodic = 0.7 * torch.cos(2 * math.pi * 64 / 512 * n + 0.3)  # whole number of periods
    torch.testing.assert_close(envelope(periodic, dim=0), torch.full_like(n, 0.7), atol=1e-10, rtol=0)
    tone = torch.cos(2 * math.pi * 0.2 * n + 1.0)[:, None].repeat(1, 3)  # not periodic: edge effects only
    env = envelope(tone, dim=0)[50:-50]
    assert env.shape == (412, 3) and float((env - 1).abs().max()) < 0.05  # measured 0.012


def test_anechoic_cyst_is_darker_than_background(frames, envelopes):
    """Measured cyst contrast on the clean envelope: -25.0, -16.6, -21.2, -23.1 dB; mean B-mode
    difference (60 dB) 29.8, 23.8, 24.9, 28.9 dB."""
    for i in range(N):
        cyst, bg = frames["cyst_mask"][i, 0], frames["background_mask"][i, 0]
        assert contrast_db(envelopes["tissue"][i], cyst, bg) < -12.0
        b = bmode(expand(frames["tissue"][i, 0]))
        assert float(b[bg].mean() - b[cyst].mean()) > 15.0
        assert float(b.min()) >= -60.0 and float(b.max()) <= 0.0


def test_haze_is_strongest_near_the_chest_wall_and_decays_with_depth(frames):
    """Haze power in the 3 cm beyond the wall over that below 9 cm: measured 10.8 to 16.0 dB. Inside
    the wall there is no haze (by construction, up to PSF leakage)."""
    r = torch.arange(SAMPLES) * UltrasoundConfig().depth / SAMPLES
    for i in range(N):
        h = expand(frames["haze"][i, 0])
        zw = float(frames["wall_depth"][i])
        near, far = h[(r > zw) & (r < zw + 0.03)], h[r > 0.09]
        assert 10 * math.log10(float(near.square().mean() / far.square().mean())) > 6.0
        assert float(h[r < 0.8 * zw].abs().max()) < 1e-4


def test_haze_is_laterally_structured_not_white(frames):
    """Lag-1 lateral correlation of RF 0.5-6 cm below the wall: haze 0.99, tissue 0.91-0.93 (white
    noise: 0); haze speckle is laterally broader than tissue speckle."""
    r = torch.arange(SAMPLES) * UltrasoundConfig().depth / SAMPLES

    def lateral_correlation(v, rows):
        v = v[rows]
        return float((v[:, :-1] * v[:, 1:]).mean() / v.square().mean())

    for i in range(N):
        zw = float(frames["wall_depth"][i])
        rows = (r > zw + 0.005) & (r < zw + 0.06)
        ch = lateral_correlation(expand(frames["haze"][i, 0]), rows)
        ct = lateral_correlation(expand(frames["tissue"][i, 0]), rows)
        assert ch > 0.97 and ch > ct > 0.5


def test_haze_lowers_gcnr_and_contrast_but_keeps_tissue(frames, envelopes):
    """Measured (4 frames): cyst gCNR clean 0.87 (min 0.82) vs hazy 0.50; chamber (blood vs
    myocardium) gCNR 0.997 vs 0.83; cyst contrast -21.5 vs -7.0 dB; KS of the myocardial
    log-envelope, clean vs hazy, 0.012-0.044."""
    g = {k: [] for k in ("cyst_t", "cyst_h", "lv_t", "lv_h", "c_t", "c_h")}
    for i in range(N):
        cyst, bg = frames["cyst_mask"][i, 0], frames["background_mask"][i, 0]
        blood, wall = frames["blood_mask"][i, 0], frames["wall_mask"][i, 0]
        et, eh = envelopes["tissue"][i], envelopes["hazy"][i]
        g["cyst_t"].append(gcnr(et, cyst, bg))
        g["cyst_h"].append(gcnr(eh, cyst, bg))
        g["lv_t"].append(gcnr(et, blood, wall))
        g["lv_h"].append(gcnr(eh, blood, wall))
        g["c_t"].append(contrast_db(et, cyst, bg))
        g["c_h"].append(contrast_db(eh, cyst, bg))
        assert ks_statistic(et.log(), eh.log(), wall) < 0.15
    m = {k: sum(v) / N for k, v in g.items()}
    assert min(g["cyst_t"]) > 0.7 and m["cyst_t"] > 0.8
    assert m["cyst_h"] < 0.7 and m["cyst_t"] - m["cyst_h"] > 0.2
    assert min(g["lv_t"]) > 0.95 and m["lv_h"] < 0.92
    assert m["c_h"] > m["c_t"] + 8.0


def test_frames_are_reproducible(frames):
    again = ultrasound_frames(2, seed=0)  # a prefix of the fixture's frames
    for k in again:
        assert torch.equal(again[k], frames[k][:2]), k
    other = ultrasound_frames(1, seed=1)
    assert not torch.equal(other["tissue"], frames["tissue"][:1])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(ultrasound_frames(1, seed=gen)["haze"], frames["haze"][:1])


def test_patches_shapes_range_and_determinism():
    tissue, haze = ultrasound_patches(20, size=32, seed=3, per_frame=8)
    assert tissue.shape == haze.shape == (20, 1, 32, 32)
    assert tissue.dtype == haze.dtype == torch.float32
    for p in (tissue, haze):
        assert float(p.abs().max()) <= 1.0 and bool(torch.isfinite(p).all())
    assert float(tissue.std()) > 0.1 and float(haze.abs().max()) > 0.05
    t2, h2 = ultrasound_patches(20, size=32, seed=3, per_frame=8)
    assert torch.equal(tissue, t2) and torch.equal(haze, h2)
    assert ultrasound_patches(0, size=16)[0].shape == (0, 1, 16, 16)


def test_band_limited_patches_are_cut_from_the_resampled_frame():
    """``width=`` patches are patches of ``BandlimitedUpsample(...).adjoint(frame)``, with the frame's energy."""
    tissue, haze = ultrasound_patches(3, size=16, seed=5, per_frame=3, width=32)
    frame = ultrasound_frames(1, LINES, SAMPLES, seed=5)  # the same generator draws the same frame first
    down = ops.BandlimitedUpsample((1, SAMPLES, 32), LINES).adjoint
    for patches, key in ((tissue, "tissue"), (haze, "haze")):
        small = down(frame[key])[0, 0]
        found = [
            bool((small.unfold(0, 16, 1).unfold(1, 16, 1) - p[0]).abs().amax((-1, -2)).min() < 1e-6)
            for p in patches
        ]
        assert all(found), key
        ratio = float(small.pow(2).sum() / frame[key].pow(2).sum())
        # content above 1/8 cycle per line is lost: 8% of the tissue here, 1% on the 256-line grid
        assert 0.85 < ratio <= 1 + 1e-6, (key, ratio)
    with pytest.raises(ValueError, match="width"):
        ultrasound_patches(1, size=16, width=LINES + 1)


def test_metrics_on_known_cases():
    img = torch.cat([torch.zeros(50), torch.ones(50)])
    a, b = torch.arange(100) < 50, torch.arange(100) >= 50
    assert gcnr(img, a, b) == pytest.approx(1.0)
    assert gcnr(img, a, a) == pytest.approx(0.0)
    assert contrast_db(img + 1, a, b) == pytest.approx(20 * math.log10(0.5))
    stats = pytest.importorskip("scipy.stats")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, generator=gen), 1.2 * torch.randn(450, generator=gen) + 0.1
    assert ks_statistic(x, y) == pytest.approx(stats.ks_2samp(x.numpy(), y.numpy()).statistic, abs=1e-12)
    with pytest.raises(ValueError, match="non-empty"):
        gcnr(img, a, torch.zeros(100, dtype=torch.bool))


def test_scan_convert_and_argument_errors(frames):
    img = scan_convert(frames["echogenicity"][0, 0], size=64)
    assert img.shape == (64, 82)
    assert bool(torch.isnan(img[0, 0])) and not bool(torch.isnan(img[-1, 41]))
    with pytest.raises(ValueError, match="lines"):
        ultrasound_frames(1, lines=4)
    with pytest.raises(ValueError, match="size"):
        ultrasound_patches(1, size=200)
