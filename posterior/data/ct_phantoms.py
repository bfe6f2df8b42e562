"""CT-style ellipse phantoms: random ones in the spirit of Shepp & Logan (1974), and the original; in 3D,
random volumes whose slices are such phantoms (:func:`phantom_volumes`) and the 3D Shepp-Logan head
(:func:`shepp_logan_volume`).

A phantom is a sum of constant-intensity ellipses. Each random phantom has

- a skull: an outer ellipse of bright intensity ``v_skull`` (0.85..1), slightly random in centre,
  axes and rotation;
- a body: an ellipse just inside it with additive intensity ``v_body - v_skull``, so the skull
  becomes a bright ring around a body of moderate intensity ``v_body`` (0.2..0.4);
- 3 to 8 inner ellipses inside the body, with random centres, axes, rotations and additive
  intensities of either sign (0.1..0.3 in magnitude), like Shepp-Logan's ventricles and tumours.

The sum is clipped to ``[0, 1]``. Each ellipse is tested on a pixel grid through its quadratic
form ``Q(x, y) <= 1``, written in the six monomials ``x^2, xy, y^2, x, y, 1`` so that all ellipses
of a batch come from one matrix product; edges are anti-aliased by supersampling and average
pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from posterior.utils import make_generator

MAX_INNER = 8
_CHUNK_ELEMENTS = 2**18  # ellipse-by-pixel entries per chunk (1 MB in float32: stays in cache)


def _quadratic_coefficients(cx: Tensor, cy: Tensor, a: Tensor, b: Tensor, theta: Tensor) -> Tensor:
    """Coefficients of ``Q = ((u/a)^2 + (w/b)^2)`` in the monomials ``(x^2, xy, y^2, x, y, 1)``,
    where ``(u, w)`` are ``(x - cx, y - cy)`` rotated by ``-theta``; shape ``(*cx.shape, 6)``."""
    c, s = torch.cos(theta), torch.sin(theta)
    ia, ib = 1 / a**2, 1 / b**2
    qa = c**2 * ia + s**2 * ib  # coefficient of dx^2
    qb = 2 * c * s * (ia - ib)  # of dx dy
    qc = s**2 * ia + c**2 * ib  # of dy^2
    return torch.stack(
        [
            qa,
            qb,
            qc,
            -2 * qa * cx - qb * cy,
            -qb * cx - 2 * qc * cy,
            qa * cx**2 + qb * cx * cy + qc * cy**2,
        ],
        dim=-1,
    )


def phantoms(n: int, size: int = 32, seed: int | torch.Generator = 0, *, supersample: int = 2) -> Tensor:
    """Random CT-style ellipse phantoms (see the module docstring).

    Parameters
    ----------
    n : int
        Number of phantoms.
    size : int
        Side length in pixels; the field of view is ``[-1, 1]^2``.
    seed : int or torch.Generator
        The same seed gives the same phantoms; on CPU, ``phantoms(m, seed=s)`` are the first ``m``
        of ``phantoms(n, seed=s)`` for ``m <= n``.
    supersample : int
        Each pixel is the mean of ``supersample^2`` sub-pixel samples (1: no anti-aliasing).

    Returns
    -------
    Tensor, shape (n, 1, size, size), float32 in [0, 1], on the generator's device.
    """
    for name, value, low in (("n", n, 0), ("size", size, 1), ("supersample", supersample, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    gen, device = make_generator(seed, "cpu")

    # All random numbers of phantom i come from row i of one uniform draw, so (on CPU) the first
    # phantoms do not depend on n.
    u = torch.rand((n, 12 + 7 * MAX_INNER), generator=gen, device=device)
    return _draw(*_ellipse_parameters(u), size, supersample)


def _ellipse_parameters(u: Tensor):
    """The ellipses of ``n`` random phantoms from uniforms ``u`` of shape ``(n, 12 + 7 k)``:
    ``((cx, cy, a, b, theta), v_skull, v_body, vk)`` as :func:`_draw` takes them."""
    n, k, device = u.shape[0], MAX_INNER, u.device
    uk = u[:, 12:].reshape(n, 7, k)

    def scale(v: Tensor, lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * v

    # Skull (outer) and body (inner) ellipses share a rotation; the body is offset a little.
    cx0, cy0 = scale(u[:, 0], -0.05, 0.05), scale(u[:, 1], -0.05, 0.05)
    a0, b0 = scale(u[:, 2], 0.62, 0.78), scale(u[:, 3], 0.80, 0.95)
    theta0 = scale(u[:, 4], -math.pi / 12, math.pi / 12)
    a1, b1 = a0 - scale(u[:, 5], 0.05, 0.09), b0 - scale(u[:, 6], 0.05, 0.09)  # skull thickness
    cx1, cy1 = cx0 + scale(u[:, 7], -0.01, 0.01), cy0 + scale(u[:, 8], -0.02, 0.01)
    v_skull, v_body = scale(u[:, 9], 0.85, 1.0), scale(u[:, 10], 0.2, 0.4)
    count = 3 + (u[:, 11:12] * (MAX_INNER - 2)).long().clamp(max=MAX_INNER - 3)  # 3..8 inner ellipses

    # Inner ellipses: centres within 70% of the body (in its own axes), log-uniform axes.
    radius, phi = 0.7 * torch.sqrt(uk[:, 0]), scale(uk[:, 1], 0.0, 2 * math.pi)
    du, dw = radius * a1[:, None] * torch.cos(phi), radius * b1[:, None] * torch.sin(phi)
    c0, s0 = torch.cos(theta0)[:, None], torch.sin(theta0)[:, None]
    cxk, cyk = cx1[:, None] + c0 * du - s0 * dw, cy1[:, None] + s0 * du + c0 * dw
    ak = torch.exp(scale(uk[:, 2], math.log(0.04), math.log(0.3)))
    bk = torch.exp(scale(uk[:, 3], math.log(0.04), math.log(0.3)))
    thetak = scale(uk[:, 4], 0.0, math.pi)
    vk = torch.where(uk[:, 5] < 0.5, -1.0, 1.0) * scale(uk[:, 6], 0.1, 0.3)
    vk = vk * (torch.arange(k, device=device) < count)  # unused slots contribute nothing

    ellipses = (
        torch.cat([cx0[:, None], cx1[:, None], cxk], 1),
        torch.cat([cy0[:, None], cy1[:, None], cyk], 1),
        torch.cat([a0[:, None], a1[:, None], ak], 1),
        torch.cat([b0[:, None], b1[:, None], bk], 1),
        torch.cat([theta0[:, None], theta0[:, None], thetak], 1),
    )  # each (n, 2 + k): the skull, the body, the inner ellipses
    return ellipses, v_skull, v_body, vk


def phantom_volumes(
    n: int, size: int = 32, depth: int = 32, seed: int | torch.Generator = 0, *, supersample: int = 2
) -> Tensor:
    """Random 3D phantoms whose axial slices are phantoms like :func:`phantoms`, varying smoothly along
    ``z``: the skull and body are ellipsoid-like shells (each slice's ellipses scaled by
    ``sqrt(1 - (z / z_r)^2)``, ``z_r`` in 1.6..2.0, so the end slices are slightly smaller heads) and
    each inner ellipse is the slice of an ellipsoid centred at ``z_c`` in -0.7..0.7 with half-height
    0.2..0.6.

    Parameters
    ----------
    n : int
        Number of volumes.
    size : int
        Side length of a slice in pixels; the field of view is ``[-1, 1]^3``.
    depth : int
        Slices along ``z`` (centres ``(2j + 1) / depth - 1``).
    seed : int or torch.Generator
        The same seed gives the same volumes; the first ``m`` of ``n`` do not depend on ``n`` (CPU).
    supersample : int
        In-plane anti-aliasing, as for :func:`phantoms`.

    Returns
    -------
    Tensor, shape (n, 1, depth, size, size), float32 in [0, 1].
    """
    for name, value, low in (
        ("n", n, 0),
        ("size", size, 1),
        ("depth", depth, 1),
        ("supersample", supersample, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    gen, device = make_generator(seed, "cpu")
    k = MAX_INNER
    u = torch.rand((n, 12 + 7 * k + 1 + 2 * k), generator=gen, device=device)
    v = u[
        :, 12 + 7 * k :
    ]  # the z parameters: the head's z radius, then each inner ellipsoid's centre and height
    (cx, cy, a, b, theta), v_skull, v_body, vk = _ellipse_parameters(u[:, : 12 + 7 * k])
    z = (2 * torch.arange(depth, device=device, dtype=torch.float32) + 1) / depth - 1  # (depth,)
    z_r = 1.6 + 0.4 * v[:, :1]  # (n, 1): the end slices keep about 0.8 of the head (smaller than 2D ones)
    head = torch.sqrt((1 - (z / z_r) ** 2).clamp(min=0))  # (n, depth): scale of skull and body
    z_c, height = -0.7 + 1.4 * v[:, 1 : 1 + k], 0.2 + 0.4 * v[:, 1 + k :]  # (n, k)
    inner = torch.sqrt((1 - ((z[None, :, None] - z_c[:, None]) / height[:, None]) ** 2).clamp(min=0))
    scale = torch.cat([head[..., None].expand(n, depth, 2), head[..., None] * inner], -1)  # (n, depth, 2 + k)
    present = scale > 0
    scale = torch.where(present, scale, torch.ones_like(scale))  # absent ellipses get no intensity below
    centre_x, centre_y = cx[:, None, 1:2], cy[:, None, 1:2]  # inner offsets shrink with the body
    shrink = torch.cat(
        [torch.ones_like(head[..., None].expand(n, depth, 2)), head[..., None].expand(n, depth, k)], -1
    )
    slices = (
        centre_x + (cx[:, None] - centre_x) * shrink,
        centre_y + (cy[:, None] - centre_y) * shrink,
        a[:, None] * scale,
        b[:, None] * scale,
        theta[:, None].expand(n, depth, 2 + k),
    )
    vk = vk[:, None] * present[..., 2:]
    out = _draw(
        tuple(t.reshape(n * depth, 2 + k) for t in slices),
        v_skull.repeat_interleave(depth),
        v_body.repeat_interleave(depth),
        vk.reshape(n * depth, k),
        size,
        supersample,
    )
    return out.reshape(n, depth, 1, size, size).movedim(1, 2)


def _draw(ellipses, v_skull: Tensor, v_body: Tensor, vk: Tensor, size: int, supersample: int) -> Tensor:
    """Rasterise ``n`` phantoms: ``ellipses`` the centres, axes and rotations ``(cx, cy, a, b, theta)``,
    each ``(n, 2 + k)`` (skull, body, inner ones), ``v_skull``, ``v_body`` ``(n,)`` and the inner
    ellipses' additive intensities ``vk`` ``(n, k)``; shape ``(n, 1, size, size)`` in [0, 1]."""
    n, k = vk.shape
    device = vk.device
    coeff = _quadratic_coefficients(*ellipses)  # (n, 2 + k, 6)

    fine = size * supersample
    r = (2 * torch.arange(fine, device=device, dtype=torch.float32) + 1) / fine - 1  # pixel centres
    y, x = torch.meshgrid(r, r, indexing="ij")  # rows run along y, columns along x
    x, y = x.reshape(-1), y.reshape(-1)
    basis = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)])  # (6, P)

    out = torch.empty(n, 1, size, size, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // ((2 + k) * fine * fine))
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        inside = (coeff[i:j] @ basis).le_(1.0)  # (m, 2 + k, P), 1.0 inside, 0.0 outside
        skull, body = inside[:, 0], inside[:, 1]
        inner = (vk[i:j, None, :] @ inside[:, 2:]).squeeze(1)  # (m, P)
        img = v_skull[i:j, None] * skull + body * (v_body[i:j, None] - v_skull[i:j, None] + inner)
        img = img.reshape(j - i, 1, fine, fine)
        if supersample > 1:
            img = F.avg_pool2d(img, supersample)
        out[i:j] = img.clamp(0.0, 1.0)
    return out


def shepp_logan(size: int = 32) -> Tensor:
    """The (modified) Shepp-Logan phantom bundled with scikit-image (400x400), area-downsampled.

    Parameters
    ----------
    size : int
        Side length in pixels.

    Returns
    -------
    Tensor, shape (1, 1, size, size), float32, rescaled to span [0, 1].
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    try:
        from skimage.data import shepp_logan_phantom
    except ImportError as err:
        raise ImportError(
            "posterior.data.shepp_logan needs scikit-image: pip install 'posterior[data]'"
        ) from err
    x = torch.as_tensor(shepp_logan_phantom(), dtype=torch.float64)[None, None]
    mode = "area" if size <= x.shape[-1] else "bilinear"
    x = F.interpolate(x, size=(size, size), mode=mode)
    x = (x - x.min()) / (x.max() - x.min())
    return x.to(torch.float32).clamp(0.0, 1.0)


# The 3D Shepp-Logan head phantom: Kak & Slaney, "Principles of Computerized Tomographic Imaging" (1988),
# p. 102, with the contrast of Yu, Ye & Wang, "Katsevich-type algorithms for variable radius spiral
# cone-beam CT" (Proc. SPIE 5535, 2004). Per ellipsoid: centre (x, y, z), half-axes (a, b, c), rotation of
# the a-axis from the x-axis about z (degrees), additive density. y points up, as in the book.
_SHEPP_LOGAN_3D = (
    ((0.0, 0.0, 0.0), (0.69, 0.92, 0.90), 0.0, 1.0),
    ((0.0, 0.0, 0.0), (0.6624, 0.874, 0.88), 0.0, -0.8),
    ((-0.22, 0.0, -0.25), (0.41, 0.16, 0.21), 108.0, -0.2),
    ((0.22, 0.0, -0.25), (0.31, 0.11, 0.22), 72.0, -0.2),
    ((0.0, 0.35, -0.25), (0.21, 0.25, 0.50), 0.0, 0.2),
    ((0.0, 0.1, -0.25), (0.046, 0.046, 0.046), 0.0, 0.2),
    ((-0.08, -0.65, -0.25), (0.046, 0.023, 0.02), 0.0, 0.1),
    ((0.06, -0.65, -0.25), (0.046, 0.023, 0.02), 90.0, 0.1),
    ((0.06, -0.105, 0.625), (0.056, 0.04, 0.10), 90.0, 0.2),
    ((0.0, 0.1, 0.625), (0.056, 0.056, 0.10), 0.0, -0.2),
)


def shepp_logan_volume(size: int = 32, depth: int | None = None, *, supersample: int = 2) -> Tensor:
    """The 3D Shepp-Logan head phantom (Kak & Slaney 1988, p. 102; the higher contrast of Yu, Ye & Wang
    2004: skull 1, brain 0.2, ventricles 0, small features 0.3-0.4 and one at 0), ten ellipsoids in
    ``[-1, 1]^3``.

    The axial slice near ``z = -0.25`` is close to the 2D phantom of :func:`shepp_logan`, in the same
    orientation (the book's ``y`` axis points to the top of the image, row 0).

    Parameters
    ----------
    size : int
        Side length of an axial slice in pixels.
    depth : int, optional
        Slices along ``z`` (centres ``(2j + 1) / depth - 1``); ``size`` by default.
    supersample : int
        Each voxel is the mean of ``supersample^3`` sub-voxel samples.

    Returns
    -------
    Tensor, shape (1, 1, depth, size, size), float32 in [0, 1].
    """
    depth = size if depth is None else depth
    for name, value in (("size", size), ("depth", depth), ("supersample", supersample)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")

    def centres(count: int) -> Tensor:
        fine = count * supersample
        return (2 * torch.arange(fine, dtype=torch.float64) + 1) / fine - 1

    z, y, x = torch.meshgrid(centres(depth), -centres(size), centres(size), indexing="ij")
    volume = torch.zeros_like(x)
    for (cx, cy, cz), (a, b, c), degrees, density in _SHEPP_LOGAN_3D:
        cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        dx, dy = x - cx, y - cy
        inside = ((cos * dx + sin * dy) / a) ** 2 + ((cos * dy - sin * dx) / b) ** 2 + (
            (z - cz) / c
        ) ** 2 <= 1
        volume += density * inside
    volume = F.avg_pool3d(volume[None, None], supersample)
    return volume.to(torch.float32).clamp(0.0, 1.0)


def held_out_phantoms(count: int, size: int = 32) -> Tensor:
    """The held-out test images of the bundled ``phantoms`` prior, shape ``(count, 1, size, size)``: the
    Shepp-Logan phantom first, then ``phantoms(count - 1, size, seed=10_000)`` (the prior was trained
    on other seeds and validated on these)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    images = [shepp_logan(size).reshape(1, 1, size, size)]
    if count > 1:
        images.append(phantoms(count - 1, size, seed=10_000).reshape(count - 1, 1, size, size))
    return torch.cat(images)
