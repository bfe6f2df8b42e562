"""Synthetic echocardiography RF frames with multipath haze, for dehazing with two diffusion priors.

Setting: Stevens et al., "Dehazing Ultrasound using Diffusion Models" (IEEE TMI 2024, arXiv
2307.11204). Beamformed RF is ``y = x + gamma h``, tissue echoes ``x`` plus multipath haze ``h``, in
the *linear* RF domain; the networks see mu-law companded RF ``C(u) = sign(u) ln(1 + mu|u|) /
ln(1 + mu)`` (mu = 255), so the companded measurement is ``C(C^-1(x_c) + gamma C^-1(h_c))``.

Beam-domain grid of a phased-array sector: rows are depth samples ``r_n = n dr`` on ``[0, depth)``,
columns are scan lines at angles ``theta_m`` over ``sector``; shapes are drawn in Cartesian
``(x, z) = (r sin theta, r cos theta)``. Convolution model (speckle = scatterers * PSF):

- echogenicity ``E`` (mean backscattered power, myocardium 0 dB): tissue -3 dB with +-2 dB smooth
  texture; a tilted chest wall of depth ``z_w`` = 1.25..2.7 cm (skin +3, fat -12, striated muscle
  -2 dB, +12 dB specular interfaces); a ventricle-like ellipse (blood -35 dB, 8-11 mm myocardium at
  0 dB, +10 dB pericardium); an anechoic cyst (-80 dB, radius 4-6 mm, 3-4 cm deep); a hyperechoic
  inclusion (+6..+12 dB); a deep curved layer. Scatterers ``s = sqrt(E) g``, ``g ~ N(0, 1)``;
- ``RF_0 = s (*)_z p (*)_m b_r``: pulse spectrum ``P(f) = exp(-(f - f_a)^2 / (2 sigma_f^2))``,
  ``sigma_f = B f_a / (2 sqrt(2 ln 2))``; lateral Gaussian beam of two-way -6 dB width
  ``w(r) = sqrt((lambda r / D)^2 + (beta D (1 - r / z_f))^2)``, angular width ``min(w / r, 0.5)``.
  Both filters have unit gain on white noise: tissue with ``E = 1`` has unit RMS;
- ``RF = G (A RF_0 + n)``: attenuation ``A(r) = 10^(-2 alpha f_c r / 20)``, white electronic noise
  ``n``, time-gain compensation ``G = A^-tgc``.

Axial scaling: the carrier is ``f_a = min(f_c, f_s / 4)``, ``f_s = c / (2 dr)`` (at least 4 samples
per period, same fractional bandwidth), so a coarse depth grid gets coarser axial speckle (about 8
samples) instead of aliasing; the lateral beam and attenuation keep the nominal ``f_c = 2.5 MHz``.
The default 512 samples over 12 cm give ``f_a = 0.82 MHz``, 0.23 mm per sample (a 64 x 64 patch
spans 1.5 cm x 40 degrees); about 1540 samples give the physical 2.5 MHz system.

Haze (additive and coherent in RF, strongest just beyond the chest wall, decaying with depth):

- reverberation: ``R_0 = s 1[z < z_w]``, ``R_k = R_t R_{k-1} (*)_z T_k R_0``, ``k = 1..3`` (depth
  convolution: apparent depths add), ``T_k`` a lateral blur of ``2k`` lines and random shift of up
  to ``lines / 8``, normalised to unit energy, ``R_t = 0.7``; ``h_rev = PSF_{3w}[sum_k R_k 1[z > z_w]]``;
- clutter: ``h_clut = PSF_{5w}[n exp(-(z - z_w) / L_h) g(theta) 1[z > z_w]]``, ``L_h = 4 cm``,
  ``g = exp(0.7 xi)``, ``xi`` a smooth lateral Gaussian field (correlation ``lines / 10``);
- levels: RMS over the 3 cm beyond the wall of -8 dB (reverberation) and -6 dB (clutter) re unit
  tissue, shifted per frame by one U(-4, 4) dB draw; no attenuation (TGC undoes that of the
  apparent depth). Haze RMS falls about 14 dB from there to below 9 cm and lifts the blood pool
  from -35 dB to about -17 dB below the myocardium.

Normalisation: linear RF is scaled so unit-echogenicity tissue has RMS ``rms_level = 0.05``
(companded about 0.47) and clipped to [-1, 1]; the same scale serves ``x``, ``h`` and ``y``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from operators.imaging import BandlimitedUpsample
from operators.ultrasound import compand
from posterior.utils import make_generator

_FWHM = 2 * math.sqrt(2 * math.log(2))  # full width at half maximum of a Gaussian, in sigmas
_MM = 1e-3


@dataclass(frozen=True)
class UltrasoundConfig:
    """Acquisition, haze and normalisation parameters in SI units (see the module docstring)."""

    depth: float = 0.12  # imaging depth (m); the frame spans [0, depth)
    sector: float = math.radians(80.0)  # sector width (rad)
    c: float = 1540.0  # speed of sound (m/s)
    fc: float = 2.5e6  # nominal centre frequency f_c (Hz)
    bandwidth: float = 0.6  # fractional -6 dB bandwidth B
    aperture: float = 0.019  # D (m)
    focus: float = 0.07  # transmit focus z_f (m)
    defocus: float = 0.3  # beta
    attenuation: float = 0.5  # alpha (dB/cm/MHz)
    tgc: float = 1.0  # fraction of the attenuation undone by time-gain compensation
    noise_db: float = -65.0  # electronic noise RMS re unit-echogenicity tissue, before TGC
    rms_level: float = 0.05  # linear RF RMS of unit-echogenicity tissue
    reverb_db: float = -8.0  # reverberation RMS re unit tissue, 3 cm beyond the wall
    clutter_db: float = -6.0  # clutter RMS re unit tissue, 3 cm beyond the wall
    haze_jitter_db: float = 4.0  # per-frame haze level shift ~ U(-j, j) dB
    orders: int = 3  # reverberation orders K
    reflection: float = 0.7  # transducer reflection coefficient R_t
    clutter_length: float = 0.04  # clutter decay length L_h (m)
    mu: float = 255.0  # mu-law parameter


# ----------------------------------------------------------------------------------- signal chain
def envelope(rf: Tensor, dim: int = -2) -> Tensor:
    """Envelope ``|rf + i Hilbert(rf)|`` along ``dim`` (depth): FFT, double the positive and zero the
    negative frequencies, inverse FFT. Same shape as the (linear, not companded) ``rf``."""
    n = rf.shape[dim]
    w = torch.zeros(n, device=rf.device, dtype=rf.dtype)
    w[0] = 1.0
    w[1 : (n + 1) // 2] = 2.0
    if n % 2 == 0:
        w[n // 2] = 1.0
    shape = [1] * rf.ndim
    shape[dim] = n
    return torch.fft.ifft(torch.fft.fft(rf, dim=dim) * w.view(shape), dim=dim).abs()


def bmode(rf: Tensor, dynamic_range: float = 60.0, ref: Tensor | float | None = None) -> Tensor:
    """B-mode ``20 log10(env / ref)`` clipped to ``[-dynamic_range, 0]`` dB.

    rf : Tensor, shape (..., samples, lines), linear RF (``expand`` companded frames first).
    ref : reference amplitude; default the 99.9th envelope percentile of each image. Pass the clean
        frame's value to compare clean and hazy images on one scale.
    Returns a Tensor of the same shape.
    """
    env = envelope(rf, dim=-2)
    if ref is None:
        ref = env.flatten(-2).quantile(0.999, dim=-1)[..., None, None]
    return (20 * torch.log10(env / ref + 1e-12)).clamp(-dynamic_range, 0.0)


def _smooth_noise(
    shape: tuple[int, int], sigma_rows: float, sigma_cols: float, gen: torch.Generator
) -> Tensor:
    """Gaussian-filtered (std in pixels, circular) white noise, rescaled to unit std; shape ``shape``."""
    dev = gen.device
    kr = torch.fft.fftfreq(shape[0], device=dev)[:, None]
    kc = torch.fft.rfftfreq(shape[1], device=dev)
    h = torch.exp(-2 * math.pi**2 * ((sigma_rows * kr) ** 2 + (sigma_cols * kc) ** 2))
    out = torch.fft.irfft2(torch.fft.rfft2(torch.randn(shape, generator=gen, device=dev)) * h, s=shape)
    return out / out.std()


def _beam(s: Tensor, r: Tensor, dth: float, cfg: UltrasoundConfig, widen: float = 1.0) -> Tensor:
    """Separable PSF: axial pulse along rows (zero-padded rFFT), depth-dependent lateral Gaussian along
    columns (circular rFFT over the padded lines). s: (samples, padded lines); same shape out."""
    S, Lp = s.shape
    dr = float(r[1] - r[0])
    fs = cfg.c / (2 * dr)
    fa = min(cfg.fc, fs / 4)
    sig_f = cfg.bandwidth * fa / _FWHM
    f = torch.fft.fftfreq(2 * S, d=1 / fs, device=s.device).abs()
    pulse = torch.exp(-((f - fa) ** 2) / (2 * sig_f**2))
    pulse = pulse[: S + 1] / pulse.square().mean().sqrt()  # unit gain on white noise
    x = torch.fft.irfft(torch.fft.rfft(s, n=2 * S, dim=0) * pulse[:, None], n=2 * S, dim=0)[:S]
    lam, d = cfg.c / cfg.fc, cfg.aperture
    w = torch.sqrt((lam * r / d) ** 2 + (cfg.defocus * d * (1 - r / cfg.focus)) ** 2)
    sig = (widen * w / r.clamp_min(dr / 2)).clamp(max=0.5) / (_FWHM * dth)  # (S,), in lines
    k = torch.fft.fftfreq(Lp, device=s.device)
    lat = torch.exp(-2 * math.pi**2 * (sig[:, None] * k) ** 2)
    lat = lat[:, : Lp // 2 + 1] / lat.square().mean(1, keepdim=True).sqrt()
    return torch.fft.irfft(torch.fft.rfft(x, dim=1) * lat, n=Lp, dim=1)


# ------------------------------------------------------------------------------------- phantoms
def _phantom(r: Tensor, theta: Tensor, dth: float, gen: torch.Generator):
    """Echogenicity in dB, depth below the (tilted) skin ``d``, wall depth ``z_w`` and region masks
    ``(cyst, background, blood, wall)``; maps of shape (samples, padded lines)."""
    u = iter(torch.rand(24, generator=gen, device=gen.device).tolist())

    def unif(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(u)

    x, z = r[:, None] * torch.sin(theta), r[:, None] * torch.cos(theta)
    tex = 2 * _smooth_noise(x.shape, 1.5 * _MM / float(r[1] - r[0]), 0.065 / dth, gen)  # +-2 dB
    e = tex - 3.0
    side = 1.0 if unif(0, 1) < 0.5 else -1.0  # chamber on one side, cyst and inclusion on the other
    d0, kappa, thick, level = unif(0.10, 0.115), unif(-1, 1), unif(3, 6) * _MM, unif(-9, 6)
    layer = (z - d0 - kappa * x**2).abs() < thick / 2
    e = torch.where(layer, level + tex, e)
    xi, zi, ri, li = -side * unif(0.035, 0.05), unif(0.085, 0.105), unif(3, 5) * _MM, unif(6, 12)
    incl = (x - xi) ** 2 + (z - zi) ** 2 < ri**2
    e = torch.where(incl, li + tex, e)
    # Ventricle-like chamber: blood pool, myocardial wall, bright pericardial rim.
    xc, zc, rot = side * unif(0.003, 0.008), unif(0.07, 0.08), unif(-0.25, 0.25)
    a, b, tw = unif(15, 22) * _MM, unif(25, 30) * _MM, unif(8, 11) * _MM
    pu = (x - xc) * math.cos(rot) + (z - zc) * math.sin(rot)
    pv = (z - zc) * math.cos(rot) - (x - xc) * math.sin(rot)
    rho_in, rho_out, rho_per = (
        torch.sqrt((pu / (a + t)) ** 2 + (pv / (b + t)) ** 2) for t in (0.0, tw, tw + 1.5 * _MM)
    )
    e = torch.where(rho_per < 1, 10.0 + tex / 2, e)
    e = torch.where(rho_out < 1, tex, e)
    e = torch.where(rho_in < 1, torch.full_like(e, -35.0), e)
    # Chest wall: skin, fat, striated muscle, specular interfaces; slightly tilted.
    d = z - unif(-0.1, 0.1) * x  # depth below the tilted skin
    b1, fat, muscle_thickness = unif(1.5, 3) * _MM, unif(5, 12) * _MM, unif(6, 12) * _MM
    b2, zw = b1 + fat, b1 + fat + muscle_thickness
    muscle = -2 + 3 * torch.sin(2 * math.pi * d / (2 * _MM) + unif(0, 2 * math.pi))
    e = torch.where(d < zw, muscle, e)
    e = torch.where(d < b2, torch.full_like(e, -12.0), e)
    e = torch.where(d < b1, torch.full_like(e, 3.0), e)
    specular = torch.stack([(d - bound).abs() < 0.4 * _MM for bound in (b1, b2, zw)]).any(0)
    e = torch.where(specular, torch.full_like(e, 12.0), e)
    # Anechoic cyst in the near field, below the wall, on the side away from the chamber.
    rc = unif(4, 6) * _MM
    xcy, zcy = -side * unif(0.008, 0.012), max(unif(0.03, 0.04), zw + rc + 4 * _MM)
    dist = torch.sqrt((x - xcy) ** 2 + (z - zcy) ** 2)
    e = torch.where(dist < rc, torch.full_like(e, -80.0), e)
    below = (d > zw + 0.4 * _MM) & (dist >= rc)
    generic = below & (rho_per >= 1) & ~incl & ~layer
    masks = (
        dist < 0.8 * rc,
        generic & (dist >= 1.3 * rc) & (dist <= 1.3 * rc + 4 * _MM),
        below & (rho_in < 0.8),
        below & (rho_in > 1.05) & (rho_out < 0.95),
    )
    return e, d, zw, masks


def _rms(v: Tensor, mask: Tensor) -> Tensor:
    """Root mean square of ``v`` over ``mask`` (1 if the mask is empty)."""
    return v[mask].square().mean().sqrt().clamp_min(1e-12) if bool(mask.any()) else v.new_tensor(1.0)


def _frame(cfg: UltrasoundConfig, samples: int, lines: int, gamma: float, gen: torch.Generator) -> dict:
    """One frame: companded tissue/haze/hazy RF, echogenicity (dB) and masks, each (samples, lines)."""
    dev = gen.device
    dr, dth = cfg.depth / samples, cfg.sector / lines
    pad = math.ceil(3 * 0.5 / (_FWHM * dth))  # 3 sigma of the widest (0.5 rad) beam, in lines
    r = torch.arange(samples, device=dev) * dr
    theta = (torch.arange(-pad, lines + pad, device=dev) + 0.5) * dth - cfg.sector / 2
    e_db, d, zw, masks = _phantom(r, theta, dth, gen)
    S, Lp = e_db.shape
    s = torch.sqrt(10 ** (e_db / 10)) * torch.randn(S, Lp, generator=gen, device=dev)
    att = (10 ** (-cfg.attenuation * (cfg.fc / 1e6) * (r * 100) / 10))[:, None]  # 2 alpha f r / 20
    noise = 10 ** (cfg.noise_db / 20) * torch.randn(S, Lp, generator=gen, device=dev)
    tissue = att ** (-cfg.tgc) * (att * _beam(s, r, dth, cfg) + noise)

    # Reverberation: depth self-convolutions of the chest-wall scatterers (apparent depths add).
    wall, inner = d < zw, slice(pad, pad + lines)
    rw, rk, rev = s * wall, s * wall, torch.zeros_like(s)
    klat = torch.fft.rfftfreq(Lp, device=dev)
    for k in range(1, cfg.orders + 1):
        q = torch.fft.irfft(
            torch.fft.rfft(rw, dim=1) * torch.exp(-2 * (math.pi * 2 * k * klat) ** 2), n=Lp, dim=1
        )
        shift = int(torch.randint(-(lines // 8), lines // 8 + 1, (1,), generator=gen, device=dev))
        q = torch.roll(q, shift, dims=1)
        q = q / q.square().sum(0).mean().sqrt().clamp_min(1e-12)  # unit energy per line
        conv = torch.fft.rfft(rk, n=2 * S, dim=0) * torch.fft.rfft(q, n=2 * S, dim=0)
        rk = cfg.reflection * torch.fft.irfft(conv, n=2 * S, dim=0)[:S]
        rev = rev + rk
    h_rev = _beam(rev * ~wall, r, dth, cfg, widen=3.0)
    # Clutter: smooth, decaying with depth below the wall, with a lateral window gain g(theta).
    gain = torch.exp(0.7 * _smooth_noise((1, Lp), 0.0, lines / 10, gen))
    decay = torch.exp(-(d - zw).clamp_min(0) / cfg.clutter_length) * ~wall
    h_clut = _beam(torch.randn(S, Lp, generator=gen, device=dev) * decay * gain, r, dth, cfg, widen=5.0)
    band = (~wall & (d < zw + 0.03))[:, inner]
    jitter = cfg.haze_jitter_db * (2 * float(torch.rand(1, generator=gen, device=dev)) - 1)
    h_rev = h_rev * 10 ** ((cfg.reverb_db + jitter) / 20) / _rms(h_rev[:, inner], band)
    h_clut = h_clut * 10 ** ((cfg.clutter_db + jitter) / 20) / _rms(h_clut[:, inner], band)
    haze = (h_rev + h_clut) * att ** (1 - cfg.tgc)

    x = (cfg.rms_level * tissue[:, inner]).clamp(-1, 1)
    h = (cfg.rms_level * haze[:, inner]).clamp(-1, 1)
    out = {
        "tissue": compand(x, cfg.mu),
        "haze": compand(h, cfg.mu),
        "hazy": compand((x + gamma * h).clamp(-1, 1), cfg.mu),
        "echogenicity": e_db[:, inner],
    }
    for name, m in zip(("cyst_mask", "background_mask", "blood_mask", "wall_mask"), masks, strict=True):
        out[name] = m[:, inner]
    out["wall_depth"] = torch.tensor(zw, device=dev)
    return out


def _check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def ultrasound_frames(
    n: int,
    lines: int = 128,
    samples: int = 512,
    seed: int | torch.Generator = 0,
    *,
    gamma: float = 1.0,
    config: UltrasoundConfig | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Random cardiac-like frames: clean tissue RF, haze RF and hazy RF (see the module docstring).

    Parameters
    ----------
    n : int
        Number of frames.
    lines, samples : int
        Scan lines (columns, spanning ``config.sector``) and depth samples (rows, over ``config.depth``).
    seed : int or torch.Generator
        Same seed, same frames; ``ultrasound_frames(m, seed=s)`` are the first ``m`` of
        ``ultrasound_frames(n, seed=s)``.
    gamma : float
        Haze weight in ``hazy = C(C^-1(tissue) + gamma C^-1(haze))`` (linear sum clipped to [-1, 1]).
    config : UltrasoundConfig, optional
    device : the device of an integer seed's generator (default CPU).

    Returns
    -------
    dict of Tensors, each shape (n, 1, samples, lines) (depth along rows), on the generator's device:
    ``tissue``, ``haze``, ``hazy``: float32 mu-law companded RF in [-1, 1] (``expand`` for linear RF);
    ``echogenicity``: float32 map in dB (myocardium 0, blood -35, cyst -80);
    ``cyst_mask`` (r < 0.8 R), ``background_mask`` (tissue ring 1.3 R .. 1.3 R + 4 mm around the
    cyst), ``blood_mask`` (inside 0.8 of the chamber ellipse), ``wall_mask`` (myocardium, 5 %
    margins): bool; and ``wall_depth``, shape (n,), the chest-wall depth z_w in metres.
    """
    for name, value, low in (("n", n, 1), ("lines", lines, 16), ("samples", samples, 32)):
        _check_int(name, value, low)
    cfg = config or UltrasoundConfig()
    gen, _ = make_generator(seed, device)
    frames = [_frame(cfg, samples, lines, gamma, gen) for _ in range(n)]
    out = {k: torch.stack([f[k] for f in frames]) for k in frames[0]}
    return {k: v if k == "wall_depth" else v.unsqueeze(1) for k, v in out.items()}


def ultrasound_patches(
    n: int,
    size: int = 64,
    seed: int | torch.Generator = 0,
    *,
    lines: int = 128,
    samples: int = 512,
    per_frame: int = 16,
    width: int | None = None,
    config: UltrasoundConfig | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Random ``size x size`` patches of companded tissue RF and of haze RF, for two diffusion priors.

    Frames come from :func:`ultrasound_frames` (``lines x samples`` grid); ``per_frame`` positions
    are drawn uniformly per frame and the tissue and haze patches share them. With ``width``, each
    frame is first resampled to ``width`` columns by the band-limited downsampling
    ``operators.BandlimitedUpsample((1, samples, width), lines).adjoint`` (energy-preserving: values
    grow by ``sqrt(lines / width)``), so a patch sees ``lines / width`` times more lines. With the
    default grid a patch spans ``size * 0.23 mm`` of depth by ``size * 0.625`` degrees (64: 1.5 cm
    x 40 degrees), times ``lines / width`` laterally.

    Returns
    -------
    (tissue, haze) : Tensors, shape (n, 1, size, size), float32, depth along rows; in [-1, 1]
    without ``width`` (then ``compose(tissue, haze)`` are the matching hazy patches).
    """
    for name, value, low in (("n", n, 0), ("per_frame", per_frame, 1), ("size", size, 1)):
        _check_int(name, value, low)
    columns = lines if width is None else width
    if width is not None:
        _check_int("width", width, 1)
        if width > lines:
            raise ValueError(f"width must be <= lines = {lines}, got {width}")
    if size > min(columns, samples):
        raise ValueError(
            f"size must be <= min(width or lines, samples) = {min(columns, samples)}, got {size}"
        )
    cfg = config or UltrasoundConfig()
    gen, dev = make_generator(seed, device)
    down = None if width is None else BandlimitedUpsample((1, samples, width), lines).adjoint
    tissue = torch.empty(n, 1, size, size, device=dev)
    haze = torch.empty_like(tissue)
    for start in range(0, n, per_frame):
        f = _frame(cfg, samples, lines, 1.0, gen)
        sources = [f[key] if down is None else down(f[key][None, None])[0, 0] for key in ("tissue", "haze")]
        m = min(per_frame, n - start)
        rows = torch.randint(0, samples - size + 1, (m,), generator=gen, device=dev).tolist()
        cols = torch.randint(0, columns - size + 1, (m,), generator=gen, device=dev).tolist()
        for j, (i0, j0) in enumerate(zip(rows, cols, strict=True)):
            tissue[start + j, 0] = sources[0][i0 : i0 + size, j0 : j0 + size]
            haze[start + j, 0] = sources[1][i0 : i0 + size, j0 : j0 + size]
    return tissue, haze


def scan_convert(image: Tensor, size: int = 256, config: UltrasoundConfig | None = None) -> Tensor:
    """Beam-domain image (..., samples, lines) to a Cartesian sector image (..., size, width) by
    bilinear (r, theta) interpolation, for display; pixels outside the sector are NaN."""
    cfg = config or UltrasoundConfig()
    half = math.sin(cfg.sector / 2)
    width = max(1, round(2 * half * size))
    dev = image.device
    z = (torch.arange(size, device=dev) + 0.5) / size * cfg.depth
    x = ((torch.arange(width, device=dev) + 0.5) / width * 2 - 1) * half * cfg.depth
    zz, xx = torch.meshgrid(z, x, indexing="ij")
    rr, tt = torch.hypot(xx, zz), torch.atan2(xx, zz)
    grid = torch.stack([2 * tt / cfg.sector, 2 * rr / cfg.depth - 1 + 1 / image.shape[-2]], -1)
    flat = image.reshape(1, -1, *image.shape[-2:]).float()
    out = F.grid_sample(flat, grid[None], mode="bilinear", align_corners=False)[0]
    out[:, (tt.abs() > cfg.sector / 2) | (rr >= cfg.depth)] = float("nan")
    return out.reshape(*image.shape[:-2], size, width)


# -------------------------------------------------------------------------------------- metrics
def gcnr(image: Tensor, mask_a: Tensor, mask_b: Tensor, bins: int = 256) -> float:
    """Generalised CNR ``1 - sum_b min(f_b, g_b)`` (Rodriguez-Molares et al. 2020): one minus the
    overlap of the normalised histograms ``f``, ``g`` of ``image`` in the two regions, on ``bins``
    common bins spanning both. 1: separable, 0: same distribution. Masks: bool, ``image``'s shape."""
    a, b = image[mask_a].double(), image[mask_b].double()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError(f"gcnr needs non-empty regions, got {a.numel()} and {b.numel()} pixels")
    lo, hi = float(torch.minimum(a.min(), b.min())), float(torch.maximum(a.max(), b.max()))
    fa = torch.histc(a, bins, lo, hi) / a.numel()
    fb = torch.histc(b, bins, lo, hi) / b.numel()
    return float(1 - torch.minimum(fa, fb).sum())


def contrast_db(image: Tensor, mask_a: Tensor, mask_b: Tensor) -> float:
    """Contrast ``20 log10(mean_a / mean_b)`` dB of a linear amplitude ``image`` (the envelope)."""
    return float(20 * torch.log10(image[mask_a].double().mean() / image[mask_b].double().mean()))


def ks_statistic(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """Two-sample Kolmogorov-Smirnov ``D = sup_v |F_a(v) - F_b(v)|`` between the values of ``a`` and
    ``b`` (each restricted to ``mask`` if given, e.g. a tissue region of the clean and the dehazed
    log-envelope); equals ``scipy.stats.ks_2samp(a, b).statistic``."""
    a, b = (v[mask] if mask is not None else v.reshape(-1) for v in (a, b))
    a, b = a.double().sort().values, b.double().sort().values
    v = torch.cat([a, b])
    fa = torch.searchsorted(a, v, right=True).double() / a.numel()
    fb = torch.searchsorted(b, v, right=True).double() / b.numel()
    return float((fa - fb).abs().max())
