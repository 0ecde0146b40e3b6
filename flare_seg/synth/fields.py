"""Small math of the phantom: uniform draws, smooth random fields and profiles, rotations, signed
distances (ellipsoids, cone-capsule chains, smooth union) and separable linear upsampling."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation


def u(rng, lo_hi):
    return float(rng.uniform(*lo_hi))


def basis(t, lo, hi, n):
    """Gaussian bumps on ``n`` knots spanning [lo, hi] mm, evaluated at ``t``: shape (len(t), n)."""
    knots = np.linspace(lo, hi, n)
    step = (hi - lo) / max(n - 1, 1) if hi > lo else 1.0
    return np.exp(-0.5 * ((np.asarray(t, np.float64)[:, None] - knots) / (0.8 * step)) ** 2)


def smooth_field(coef, lo, hi, axes):
    """Unit-variance smooth random field from coefficients ``coef`` (nz, ny, nx) on knots spanning
    the physical box [lo, hi], evaluated on the grid of the 1-D ``axes``: resolution independent."""
    bz, by, bx = (basis(a, lo[i], hi[i], coef.shape[i]) for i, a in enumerate(axes))
    f = np.tensordot(bz, np.matmul(by, np.matmul(coef, bx.T)), axes=(1, 0))
    norm = np.sqrt(np.einsum("ij,ij->i", bz, bz)[:, None, None] * np.einsum("ij,ij->i", by, by)[
        None, :, None] * np.einsum("ij,ij->i", bx, bx)[None, None, :])
    return (f / np.maximum(norm, 1e-6)).astype(np.float32)


def profile(coef, t, lo=-400.0, hi=400.0):
    """Smooth random 1-D profiles (rows of ``coef``) of unit variance at positions ``t`` mm."""
    b = basis(np.clip(t, lo, hi), lo, hi, coef.shape[-1])
    return (b @ coef.T / np.sqrt(np.sum(b * b, axis=1, keepdims=True))).T


def rotation(angles_rad):
    """3x3 rotation acting on (z, y, x) vectors, from angles about the z, y and x axes."""
    r_xyz = Rotation.from_euler("ZYX", -np.asarray(angles_rad, np.float64)).as_matrix()
    return r_xyz[::-1, ::-1]


def ellipsoid(q, centre, semi):
    """Approximate signed distance (mm) to an ellipsoid; ``semi`` entries may be (neg, pos) pairs."""
    acc = 0.0
    for qi, ci, si in zip(q, centre, semi, strict=True):
        d = qi - ci
        s = np.where(d < 0, si[0], si[1]) if isinstance(si, tuple) else si
        acc = acc + (d / s) ** 2
    smin = min(min(s) if isinstance(s, tuple) else s for s in semi)
    return (np.sqrt(acc) - 1.0) * smin


def smin(a, b, k):
    """Polynomial smooth minimum (smooth union of two signed distances), blend width ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def chain_sdf(q, pts, radii, axes=None, margin_mm=0.0):
    """Signed distance (mm) to a chain of cone capsules through ``pts`` (k, 3; z, y, x) with radii.

    ``q`` are coordinate arrays (broadcastable); when the undisplaced 1-D ``axes`` are given, each
    segment is evaluated only inside its own box (plus ``margin_mm``), which keeps long chains cheap.
    """
    shape = np.broadcast_shapes(*(np.shape(c) for c in q))
    out = np.full(shape, 1e4, np.float32)
    pts, radii = np.asarray(pts, np.float64), np.asarray(radii, np.float64)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:], strict=True):
        sl = (slice(None),) * 3
        if axes is not None:
            lo, hi = np.minimum(a, b) - max(ra, rb) - margin_mm, np.maximum(a, b) + max(ra, rb) + margin_mm
            sl = tuple(slice(np.searchsorted(ax, lo_ax), np.searchsorted(ax, hi_ax, "right"))
                       for ax, lo_ax, hi_ax in zip(axes, lo, hi, strict=True))
            if any(s.stop <= s.start for s in sl):
                continue
        c = [np.broadcast_to(ci, shape)[sl] for ci in q]
        ab = b - a
        t = ((c[0] - a[0]) * ab[0] + (c[1] - a[1]) * ab[1] + (c[2] - a[2]) * ab[2]) / max(ab @ ab, 1e-9)
        t = np.clip(t, 0.0, 1.0)
        d2 = sum((c[i] - a[i] - t * ab[i]) ** 2 for i in range(3))
        np.minimum(out[sl], np.sqrt(d2) - (ra + t * (rb - ra)), out=out[sl])
    return out


def resize_linear(a, shape):
    """Corner-aligned separable linear upsampling of a 3-D array to ``shape``."""
    for axis in (2, 1, 0):
        n_in, n_out = a.shape[axis], shape[axis]
        if n_in == n_out:
            continue
        if n_in == 1:
            a = np.repeat(a, n_out, axis)
            continue
        pos = np.linspace(0.0, n_in - 1.0, n_out)
        i0 = np.minimum(pos.astype(np.intp), n_in - 2)
        w = (pos - i0).astype(np.float32).reshape([-1 if k == axis else 1 for k in range(3)])
        a0, a1 = np.take(a, i0, axis), np.take(a, i0 + 1, axis)
        a1 -= a0
        a1 *= w
        a0 += a1
        a = a0
    return a

