"""Voxel-grid geometry and exact reorientation to one canonical orientation (NumPy only).

Conventions (the only place they are spelled out in full):

* Arrays are indexed ``(z, y, x)``. ``Geometry.shape`` and ``Geometry.spacing_mm`` follow that
  order.
* ``Geometry.origin_mm`` is a physical point in LPS millimetres, ``(x, y, z)``, as DICOM and ITK
  store it: it is not an array axis.
* ``Geometry.direction`` is ITK's row-major 3x3 matrix: column ``j`` is the physical (LPS) unit
  vector of ITK index axis ``j``, where ITK's index axes are ``(x, y, z)`` = array axes
  ``(2, 1, 0)``.

The canonical orientation is LPS: array axis 2 (x) runs towards the patient's left, axis 1 (y)
towards posterior, axis 0 (z) towards superior. Reorienting only permutes and flips axes, so it is
exact and :func:`from_canonical` undoes it bit for bit. An oblique residual rotation is kept in the
header and ignored by the processing, which works in index space.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: Tolerances of "same grid" throughout the project.
SPACING_TOL_MM = 1e-4
ORIGIN_TOL_MM = 1e-4
DIRECTION_TOL = 1e-6
IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Geometry:
    """Where an array's voxels lie in space. See the module docstring for the axis conventions."""

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or len(self.spacing_mm) != 3 or len(self.origin_mm) != 3:
            raise ValueError(f"Geometry needs 3-D shape, spacing and origin, got {self}")
        if len(self.direction) != 9:
            raise ValueError(f"Geometry.direction needs 9 values, got {len(self.direction)}")
        if min(self.spacing_mm) <= 0 or not np.all(np.isfinite(self.spacing_mm)):
            raise ValueError(f"Geometry.spacing_mm must be positive and finite, got {self.spacing_mm}")

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Edge-to-edge extent along the array axes ``(z, y, x)``."""
        return tuple(float(n * s) for n, s in zip(self.shape, self.spacing_mm, strict=True))

    def index_to_physical(self, index_zyx) -> np.ndarray:
        """Physical LPS point ``(x, y, z)`` of a (possibly fractional) array index ``(z, y, x)``."""
        idx_xyz = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        spacing_xyz = np.asarray(self.spacing_mm, dtype=np.float64)[::-1]
        return np.asarray(self.origin_mm) + (idx_xyz * spacing_xyz) @ self.direction_matrix.T

    def mismatch(self, other: Geometry) -> str | None:
        """Describe how ``other`` differs beyond the project's tolerances, or ``None`` if it matches."""
        if tuple(self.shape) != tuple(other.shape):
            return f"size {tuple(other.shape)} != {tuple(self.shape)} (z, y, x)"
        checks = (
            ("spacing", self.spacing_mm, other.spacing_mm, SPACING_TOL_MM, "mm"),
            ("origin", self.origin_mm, other.origin_mm, ORIGIN_TOL_MM, "mm"),
            ("direction", self.direction, other.direction, DIRECTION_TOL, ""),
        )
        for name, mine, theirs, tol, unit in checks:
            diff = float(np.max(np.abs(np.subtract(mine, theirs))))
            if diff > tol:
                return f"{name} differs by {diff:.3g}{unit} (tolerance {tol:g}{unit})"
        return None

    def matches(self, other: Geometry) -> bool:
        return self.mismatch(other) is None

    def to_dict(self) -> dict:
        return {
            "shape_zyx": list(self.shape),
            "spacing_mm_zyx": list(self.spacing_mm),
            "origin_mm_lps_xyz": list(self.origin_mm),
            "direction": list(self.direction),
        }


@dataclass(frozen=True)
class Orientation:
    """How an array was permuted and flipped into canonical LPS; :func:`from_canonical` undoes it.

    ``axes[k]`` is the original array axis that became canonical array axis ``k``; ``flips[k]``
    says whether canonical axis ``k`` was reversed after the permutation.
    """

    axes: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)


def _closest_axes(direction: np.ndarray) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """For each ITK index axis, the physical axis it points along most, as a permutation, and its sign.

    Chooses the permutation that maximises the summed absolute cosines, so an oblique matrix
    still maps to a unique axis assignment (what DICOMOrient does too).
    """
    best, best_score = None, -1.0
    for perm in itertools.permutations(range(3)):  # perm[j]: physical axis of index axis j
        score = sum(abs(direction[perm[j], j]) for j in range(3))
        if score > best_score + 1e-12:
            best, best_score = perm, score
    signs = tuple(float(np.sign(direction[best[j], j]) or 1.0) for j in range(3))
    return best, signs


def canonical_orientation(geometry: Geometry) -> Orientation:
    """The permutation and flips that bring an array with this geometry into canonical LPS."""
    perm, signs = _closest_axes(geometry.direction_matrix)
    # ITK index axis j lies along physical axis perm[j]; in the canonical image, ITK axis perm[j]
    # must be that axis. Array axis of ITK axis a is 2 - a.
    axes = [0, 0, 0]
    flips = [False, False, False]
    for j in range(3):
        canon_array_axis = 2 - perm[j]
        axes[canon_array_axis] = 2 - j
        flips[canon_array_axis] = signs[j] < 0
    return Orientation(tuple(axes), tuple(flips))


def to_canonical(array: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, Geometry, Orientation]:
    """Permute and flip ``array`` (``(z, y, x)`` or ``(z, y, x, c)``) into canonical LPS.

    Returns the reoriented array (a view where possible), its geometry and the record for
    :func:`from_canonical`. The physical position of every voxel is unchanged.
    """
    if tuple(array.shape[:3]) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape[:3]} does not match geometry shape {geometry.shape}")
    orient = canonical_orientation(geometry)
    extra = tuple(range(3, array.ndim))
    out = np.transpose(array, orient.axes + extra)
    flip_axes = tuple(k for k in range(3) if orient.flips[k])
    if flip_axes:
        out = np.flip(out, axis=flip_axes)
    return out, reorient_geometry(geometry, orient), orient


def reorient_geometry(geometry: Geometry, orient: Orientation) -> Geometry:
    """The geometry of an array after :func:`to_canonical` with ``orient``."""
    d = geometry.direction_matrix
    spacing_old = np.asarray(geometry.spacing_mm, dtype=np.float64)
    shape_old = np.asarray(geometry.shape)
    origin = np.asarray(geometry.origin_mm, dtype=np.float64)
    new_dir = np.zeros((3, 3))
    for k in range(3):  # canonical array axis k <- old array axis orient.axes[k]
        old_itk = 2 - orient.axes[k]
        col = d[:, old_itk].copy()
        if orient.flips[k]:
            old_axis = orient.axes[k]
            origin = origin + col * spacing_old[old_axis] * (shape_old[old_axis] - 1)
            col = -col
        new_dir[:, 2 - k] = col
    return Geometry(
        shape=tuple(int(geometry.shape[a]) for a in orient.axes),
        spacing_mm=tuple(float(geometry.spacing_mm[a]) for a in orient.axes),
        origin_mm=tuple(float(v) for v in origin),
        direction=tuple(float(v) for v in new_dir.ravel()),
    )


def from_canonical(array: np.ndarray, orient: Orientation) -> np.ndarray:
    """Undo :func:`to_canonical` exactly: the array comes back in its original axis order."""
    flip_axes = tuple(k for k in range(3) if orient.flips[k])
    out = np.flip(array, axis=flip_axes) if flip_axes else array
    inverse = tuple(int(i) for i in np.argsort(orient.axes))
    extra = tuple(range(3, array.ndim))
    return np.transpose(out, inverse + extra)


def rotation_direction(angles_rad: tuple[float, float, float]) -> tuple[float, ...]:
    """A direction matrix (row-major, 9 values) rotating by the given angles about x, y and z."""
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple(float(v) for v in (rz @ ry @ rx).ravel())
