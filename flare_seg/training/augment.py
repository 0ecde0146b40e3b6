"""Random spatial and intensity augmentation (seed 002, Table 3), NumPy/SciPy only.

Translation, rotation, scaling and a B-spline elastic deformation are composed into *one*
mapping from network-grid voxels to input index coordinates, so each training sample is
resampled exactly once, from the cached image at (near) original resolution. No left-right
mirroring: it would swap the liver and spleen sides. Every random draw takes the caller's
``numpy.random.Generator``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from flare_seg.config import AugmentConfig
from flare_seg.preprocess import GridRecord


@dataclass(frozen=True)
class SpatialTransform:
    """Output-grid offsets (mm, from the grid centre, ``(z, y, x)``) -> input offsets (mm).

    ``p_in = matrix @ p_out + translation_mm + displacement(p_out)``, where ``displacement_mm`` is
    a ``(3, gz, gy, gx)`` control grid spanning the output grid, interpolated with cubic B-splines.
    """

    matrix: np.ndarray
    translation_mm: np.ndarray
    displacement_mm: np.ndarray | None = None

    @classmethod
    def identity(cls) -> SpatialTransform:
        return cls(np.eye(3), np.zeros(3), None)


def rotation_matrix(angles_rad) -> np.ndarray:
    """Rotation about the z, y and x array axes by the given angles, composed."""
    mats = []
    for axis, angle in enumerate(angles_rad):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        mats.append(m)
    return mats[0] @ mats[1] @ mats[2]


def random_transform(rng: np.random.Generator, cfg: AugmentConfig) -> SpatialTransform:
    """Draw translation, rotation, uniform and per-axis scale, and an elastic control grid."""
    if not cfg.enabled:
        return SpatialTransform.identity()
    angles = rng.uniform(-cfg.rotation_rad, cfg.rotation_rad, size=3)
    per_axis = rng.uniform(1 - cfg.scale_per_axis, 1 + cfg.scale_per_axis, size=3)
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale) * per_axis
    matrix = rotation_matrix(angles) @ np.diag(scale)
    translation = rng.uniform(-cfg.translation_mm, cfg.translation_mm, size=3)
    displacement = None
    if cfg.elastic_mm > 0 and cfg.elastic_grid >= 2:
        g = cfg.elastic_grid
        displacement = rng.uniform(-cfg.elastic_mm, cfg.elastic_mm, size=(3, g, g, g))
    return SpatialTransform(matrix, translation, displacement)


@functools.lru_cache(maxsize=64)
def _bspline_basis(n_out: int, n_control: int) -> np.ndarray:
    """``(n_out, n_control)`` matrix of 1-D cubic B-spline interpolation (zoom of unit impulses)."""
    eye = np.eye(n_control)
    basis = np.stack([ndimage.zoom(e, n_out / n_control, order=3, mode="nearest", grid_mode=True) for e in eye], 1)
    basis = basis.astype(np.float32)
    basis.setflags(write=False)  # cached and shared by every caller: must stay read-only
    return basis


def _dense_displacement(control: np.ndarray, shape) -> np.ndarray:
    """Cubic B-spline interpolation of a control grid to a dense ``(3, *shape)`` field (float32).

    Separable: three small matrix products instead of ``ndimage.zoom``'s 64 taps per voxel; the
    same linear operator (each basis column is ``zoom`` of a unit impulse), ~20x faster.
    """
    bz, by, bx = (_bspline_basis(n, g) for n, g in zip(shape, control.shape[1:], strict=True))
    field = np.einsum("cijk,xk->cijx", control.astype(np.float32), bx)
    field = np.einsum("cijx,yj->ciyx", field, by)
    return np.einsum("ciyx,zi->czyx", field, bz, optimize=True)


def sample_coordinates(record: GridRecord, input_spacing_mm, transform: SpatialTransform) -> np.ndarray:
    """Input index coordinates ``(3, Z, Y, X)`` of every voxel of ``record``'s grid under ``transform``."""
    shape = record.output_shape
    out_spacing = np.asarray(record.spacing_mm)
    in_spacing = np.asarray(input_spacing_mm, dtype=np.float64)
    centre_out = (np.asarray(shape) - 1) / 2.0
    centre_in = np.asarray(record.start) + centre_out * np.asarray(record.step)
    axes = [((np.arange(n) - c) * s).astype(np.float32) for n, c, s in zip(shape, centre_out, out_spacing, strict=True)]
    coords = np.empty((3, *shape), dtype=np.float32)
    for i in range(3):  # p_in[i] = sum_j M[i, j] p_out[j] + t[i], built by broadcasting
        acc = np.full(shape, transform.translation_mm[i], dtype=np.float32)
        for j in range(3):
            if transform.matrix[i, j] != 0:
                view = [1, 1, 1]
                view[j] = shape[j]
                acc += np.float32(transform.matrix[i, j]) * axes[j].reshape(view)
        coords[i] = acc
    if transform.displacement_mm is not None:
        coords += _dense_displacement(transform.displacement_mm, shape)
    coords /= in_spacing.astype(np.float32)[:, None, None, None]
    coords += centre_in.astype(np.float32)[:, None, None, None]
    return coords


def warp(array: np.ndarray, coords: np.ndarray, *, order: int, cval: float) -> np.ndarray:
    """Sample ``array`` at ``coords`` (linear for images, 0 = nearest for labels); ``cval`` outside.

    Within half a voxel of the edge the edge value is used, as in
    :func:`flare_seg.preprocess.resample_to_grid`.
    """
    out = ndimage.map_coordinates(array, coords, order=order, mode="nearest", prefilter=False,
                                  output=np.float32 if order else array.dtype)
    outside = np.zeros(coords.shape[1:], dtype=bool)
    for axis, n in enumerate(array.shape):
        outside |= (coords[axis] < -0.5) | (coords[axis] > n - 0.5)
    out[outside] = cval
    return out


def augment_intensity(rng: np.random.Generator, x: np.ndarray, cfg: AugmentConfig, clip=(-1.0, 1.0)) -> np.ndarray:
    """Random intensity scale and shift of a /2048-scaled image, then clamp (in place)."""
    if not cfg.enabled:
        return x
    scale = rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)
    shift = rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)
    x *= np.float32(scale)
    x += np.float32(shift)
    return np.clip(x, clip[0], clip[1], out=x)
