"""The paper's preprocessing (seed 002, section 2.1) and its one inverse, in NumPy/SciPy only.

Every step before a network works on a canonical ``(z, y, x)`` array (see :mod:`flare_seg.geometry`)
and returns a :class:`GridRecord` saying where the network grid lies in the input's index space.
Because every grid is axis-aligned in index space, one record (a start and a step per axis) is
all that is needed, and :func:`to_input_grid` is the only function that maps a prediction back.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from flare_seg.config import GridConfig, IntensityConfig, LocPreprocessConfig, SegPreprocessConfig

log = logging.getLogger(__name__)

Box = tuple[tuple[int, int, int], tuple[int, int, int]]  # (lo, hi) inclusive voxel indices, (z, y, x)


@dataclass(frozen=True)
class GridRecord:
    """A network grid in an input's index space: output voxel ``o`` lies at input index ``start + o * step``.

    ``input_shape`` is the (canonical) input array's shape, ``output_shape`` the network grid's,
    ``spacing_mm`` the network grid's spacing, all ``(z, y, x)``.
    """

    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    start: tuple[float, float, float]
    step: tuple[float, float, float]

    def footprint(self) -> list[tuple[int, int]]:
        """Per axis, the inclusive range of input voxels whose centres fall inside the grid."""
        ranges = []
        for n_in, n_out, start, step in zip(self.input_shape, self.output_shape, self.start, self.step, strict=True):
            lo = max(0, math.ceil(start - 0.5 * step - 1e-9))
            hi = min(n_in - 1, math.floor(start + (n_out - 0.5) * step + 1e-9))
            ranges.append((lo, hi))
        return ranges

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


def scale_intensity(hu: np.ndarray, cfg: IntensityConfig) -> np.ndarray:
    """HU / scale, clipped (seed 002: /2048, clip to [-1, 1]), as a new float32 array."""
    out = np.multiply(hu, np.float32(1.0 / cfg.scale_hu), dtype=np.float32)  # never modifies ``hu``
    return np.clip(out, cfg.clip[0], cfg.clip[1], out=out)


def clamp_padding(array_hu: np.ndarray, pad_hu: float = -1024.0) -> np.ndarray:
    """Values below ``pad_hu`` (scanner padding such as GE's -3024 outside the field of view) -> ``pad_hu``.

    Returns ``array_hu`` itself when nothing is below (no copy), else a clamped copy.
    """
    if array_hu.size == 0 or array_hu.min() >= pad_hu:
        return array_hu
    return np.maximum(array_hu, np.asarray(pad_hu).astype(array_hu.dtype))


def fit_size(n: float, lo: int, hi: int, multiple: int) -> int:
    """``n`` voxels rounded up to a multiple of ``multiple``, within ``lo..hi``: one valid grid size."""
    return int(min(max(multiple * math.ceil(n / multiple), lo), hi))


def choose_grid(extent_mm, grid: GridConfig) -> tuple[tuple[int, int, int], float]:
    """The smallest valid grid size covering ``extent_mm`` at ``grid.spacing_mm`` (grown if needed)."""
    spacing = float(grid.spacing_mm)
    extent = np.asarray(extent_mm, dtype=np.float64)
    needed = np.ceil(extent / spacing - 1e-6)
    if np.any(needed > np.asarray(grid.size_max_zyx)):
        spacing = float(np.max(extent / np.asarray(grid.size_max_zyx)))
        needed = np.ceil(extent / spacing - 1e-6)
    size = tuple(fit_size(n, lo, hi, grid.size_multiple)
                 for n, lo, hi in zip(needed, grid.size_min_zyx, grid.size_max_zyx, strict=True))
    return size, spacing


def centred_record(input_shape, input_spacing_mm, centre_index, size, spacing_mm) -> GridRecord:
    """A grid of ``size`` at isotropic ``spacing_mm`` centred on input index ``centre_index``."""
    step = tuple(float(spacing_mm / s) for s in input_spacing_mm)
    start = tuple(float(c - 0.5 * (n - 1) * st) for c, n, st in zip(centre_index, size, step, strict=True))
    return GridRecord(tuple(int(n) for n in input_shape), tuple(int(n) for n in size),
                      (float(spacing_mm),) * 3, start, step)


def resample_to_grid(array: np.ndarray, record: GridRecord, *, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """Sample ``array`` on the record's grid (float32); outside the input's extent gives ``cval``.

    Inside the outermost half voxel the edge value is used (not blended with ``cval``).
    """
    if tuple(array.shape) != tuple(record.input_shape):
        raise ValueError(f"array shape {array.shape} does not match record input shape {record.input_shape}")
    out = ndimage.affine_transform(
        array, np.asarray(record.step), offset=np.asarray(record.start), output_shape=record.output_shape,
        order=order, mode="nearest", prefilter=False, output=np.float32,
    )
    for axis, (n_in, n_out, start, step) in enumerate(
        zip(record.input_shape, record.output_shape, record.start, record.step, strict=True)
    ):
        coords = start + step * np.arange(n_out)
        outside = (coords < -0.5) | (coords > n_in - 0.5)
        if outside.any():
            index = [slice(None)] * 3
            index[axis] = outside
            out[tuple(index)] = cval
    return out


def _block_average(array: np.ndarray, factors) -> np.ndarray:
    """Average non-overlapping blocks of ``factors`` voxels, in float32.

    A strided sum (one pass per offset in the block) is ~2x faster here than a reshape-mean and
    needs no padded copy. A partial last block averages the voxels it has; its centre then lies
    up to half a block early, at the far edge only, which the 6 mm grid cannot resolve.
    """
    factors = tuple(int(f) for f in factors)
    if all(f == 1 for f in factors):
        return np.asarray(array, dtype=np.float32)
    out_shape = tuple(-(-n // f) for n, f in zip(array.shape, factors, strict=True))
    out = np.zeros(out_shape, dtype=np.float32)
    for offset in itertools.product(*(range(f) for f in factors)):
        view = array[tuple(slice(o, None, f) for o, f in zip(offset, factors, strict=True))]
        out[tuple(slice(0, n) for n in view.shape)] += view
    counts = [np.minimum(f, n - f * np.arange(m)).astype(np.float32)
              for n, f, m in zip(array.shape, factors, out_shape, strict=True)]
    out /= counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return out


def smooth_for_localizer(array_hu: np.ndarray, spacing_mm, sigma_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliasing before the 6 mm grid: Gaussian ``sigma_mm``, done cheaply.

    Integer block averaging down to about sigma first (a box filter is itself an anti-aliasing
    filter), then a Gaussian with the remaining variance on the small array: on a 512x512x300
    volume a full-resolution sigma = 3 mm Gaussian costs ~3 s here, this ~0.4 s. Returns the
    small float32 array and the block factors; block ``b`` lies at original index ``(f-1)/2 + f*b``.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    factors = np.array([max(1, math.floor(sigma_mm / s)) if sigma_mm > 0 else 1 for s in spacing])
    small = _block_average(array_hu, tuple(int(f) for f in factors))
    if sigma_mm > 0:
        box_var = (np.square(factors) - 1) / 12.0 * np.square(spacing)
        residual = np.sqrt(np.maximum(sigma_mm**2 - box_var, 0.0)) / (spacing * factors)
        small = ndimage.gaussian_filter(small, residual, mode="nearest", truncate=3.0, output=np.float32)
    return small, factors


def loc_record(input_shape, spacing_mm, cfg: LocPreprocessConfig) -> GridRecord:
    """The 6 mm grid over the whole image, centred on it, with a valid size."""
    extent = np.asarray(input_shape) * np.asarray(spacing_mm, dtype=np.float64)
    size, out_spacing = choose_grid(extent, cfg.grid)
    return centred_record(input_shape, spacing_mm, (np.asarray(input_shape) - 1) / 2.0, size, out_spacing)


def in_block_space(record: GridRecord, small_shape, factors) -> GridRecord:
    """``record`` re-expressed in the index space of a block-averaged array."""
    f = np.asarray(factors, dtype=np.float64)
    return GridRecord(tuple(small_shape), record.output_shape, record.spacing_mm,
                      tuple((np.asarray(record.start) - (f - 1) / 2) / f), tuple(np.asarray(record.step) / f))


def loc_input(array_hu: np.ndarray, spacing_mm, cfg: LocPreprocessConfig) -> tuple[np.ndarray, GridRecord]:
    """Localization input: the whole image, smoothed (sigma 3 mm), linearly resampled to 6 mm, scaled."""
    small, factors = smooth_for_localizer(array_hu, spacing_mm, cfg.smoothing_sigma_mm)
    record = loc_record(array_hu.shape, spacing_mm, cfg)
    x = resample_to_grid(small, in_block_space(record, small.shape, factors), order=1, cval=cfg.intensity.pad_hu)
    return scale_intensity(x, cfg.intensity), record


def expand_box(box: Box, input_shape, spacing_mm, margin_mm) -> tuple[np.ndarray, np.ndarray]:
    """Enlarge a box by ``margin_mm`` per side where the image allows; float index bounds (lo, hi)."""
    lo = np.asarray(box[0], dtype=np.float64)
    hi = np.asarray(box[1], dtype=np.float64)
    margin = margin_mm / np.asarray(spacing_mm, dtype=np.float64)
    lo = np.maximum(lo - margin, 0.0)
    hi = np.minimum(hi + margin, np.asarray(input_shape) - 1.0)
    return lo, hi


def seg_record(box: Box, input_shape, spacing_mm, cfg: SegPreprocessConfig) -> GridRecord:
    """The 2 mm grid around ``box`` (+ margin), centred on it, with a valid size (seed 002, 2.1)."""
    margin_mm = cfg.margin_voxels * cfg.grid.spacing_mm
    lo, hi = expand_box(box, input_shape, spacing_mm, margin_mm)
    extent = (hi - lo + 1.0) * np.asarray(spacing_mm)
    size, out_spacing = choose_grid(extent, cfg.grid)
    return centred_record(input_shape, spacing_mm, (lo + hi) / 2.0, size, out_spacing)


def seg_input(array_hu: np.ndarray, spacing_mm, box: Box, cfg: SegPreprocessConfig) -> tuple[np.ndarray, GridRecord]:
    """Segmentation input: the box (+ up to 16 voxels of 2 mm per side) at 2 mm, scaled.

    The box is centred in the grid and the rest is filled with image content, or the padding value
    outside the image.
    """
    record = seg_record(box, array_hu.shape, spacing_mm, cfg)
    x = resample_to_grid(array_hu, record, order=1, cval=cfg.intensity.pad_hu)
    return scale_intensity(x, cfg.intensity), record


def bounding_box(mask: np.ndarray) -> Box | None:
    """Inclusive index bounds of the non-zero voxels of ``mask``, or ``None`` when it is empty."""
    nonzero = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if any(len(n) == 0 for n in nonzero):
        return None
    return tuple(int(n[0]) for n in nonzero), tuple(int(n[-1]) for n in nonzero)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a binary mask (empty mask stays empty)."""
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def box_in_input(mask: np.ndarray, record: GridRecord, largest_component_only: bool = False) -> Box | None:
    """The input-index box covering a foreground ``mask`` given on ``record``'s grid (None if empty)."""
    if largest_component_only:
        mask = largest_component(mask)
    box = bounding_box(mask)
    if box is None:
        return None
    lo_out, hi_out = np.asarray(box[0]), np.asarray(box[1])
    start, step = np.asarray(record.start), np.asarray(record.step)
    # input voxels whose centres lie inside the outer faces of the extreme grid voxels
    lo = np.ceil(start + (lo_out - 0.5) * step - 1e-6)
    hi = np.floor(start + (hi_out + 0.5) * step + 1e-6)
    top = np.asarray(record.input_shape) - 1
    lo = np.clip(lo, 0, top).astype(int)
    hi = np.clip(hi, 0, top).astype(int)
    return tuple(int(v) for v in lo), tuple(int(v) for v in hi)


def _axis_interp(indices: np.ndarray, start: float, step: float, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower grid neighbour and weight of the upper one for input voxels ``indices`` (edge-clamped)."""
    coord = np.clip((indices - start) / step, 0.0, n_grid - 1.0)
    lower = np.minimum(np.floor(coord).astype(np.intp), max(n_grid - 2, 0))
    weight = (coord - lower).astype(np.float32)
    return lower, weight


def _lerp(array: np.ndarray, axis: int, lower: np.ndarray, weight: np.ndarray) -> np.ndarray:
    upper = np.minimum(lower + 1, array.shape[axis] - 1)
    shape = [1] * array.ndim
    shape[axis] = len(weight)
    w = weight.reshape(shape)
    a = np.take(array, lower, axis=axis)
    b = np.take(array, upper, axis=axis)
    a *= 1.0 - w
    b *= w
    a += b
    return a


def _grid_region(record: GridRecord, probs: np.ndarray | None) -> list[tuple[int, int]]:
    """Input ranges to fill: the grid's footprint, narrowed to where any grid voxel is not background.

    Exact: where all grid neighbours have background as argmax, background - p_c > 0 for every
    channel c at each neighbour, hence also for their convex combination.
    """
    ranges = record.footprint()
    if probs is None:
        return ranges
    fg = np.argmax(probs, axis=-1) != 0
    box = bounding_box(fg)
    if box is None:
        return [(lo, lo - 1) for lo, _ in ranges]  # empty
    out = []
    for axis, (lo, hi) in enumerate(ranges):
        start, step = record.start[axis], record.step[axis]
        g_lo, g_hi = box[0][axis] - 1, box[1][axis] + 1
        out.append((max(lo, math.floor(start + g_lo * step)), min(hi, math.ceil(start + g_hi * step))))
    return out


def to_input_grid(
    prediction: np.ndarray,
    record: GridRecord,
    *,
    mode: str = "linear",
    chunk_slices: int = 8,
) -> np.ndarray:
    """Map a network-grid prediction back onto the (canonical) input grid as uint8 labels.

    ``prediction`` is either per-label probabilities ``(Z, Y, X, C)`` or labels ``(Z, Y, X)``.
    ``mode="linear"``: probabilities are interpolated trilinearly (separably, a few input slices at
    a time) and the argmax is taken per chunk, so full-resolution float maps of all channels never
    exist over the whole image; only the region where the grid predicts an organ is computed.
    ``mode="nearest"``: argmax on the grid first, then nearest-neighbour lookup (faster, coarser:
    the oracle test measures the difference). Voxels outside the grid are background (0).
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    labels_only = prediction.ndim == 3
    if tuple(prediction.shape[:3]) != tuple(record.output_shape):
        raise ValueError(f"prediction shape {prediction.shape[:3]} != record grid {record.output_shape}")
    out = np.zeros(record.input_shape, dtype=np.uint8)
    if labels_only or mode == "nearest":
        grid_labels = prediction.astype(np.uint8) if labels_only else np.argmax(prediction, -1).astype(np.uint8)
        region = _grid_region(record, None)
        idx = []
        for (lo, hi), n, start, step in zip(region, record.output_shape, record.start, record.step, strict=True):
            idx.append(np.clip(np.rint((np.arange(lo, hi + 1) - start) / step), 0, n - 1).astype(np.intp))
        if all(len(i) for i in idx):
            out[tuple(slice(lo, hi + 1) for lo, hi in region)] = grid_labels[np.ix_(*idx)]
        return out
    probs = np.asarray(prediction, dtype=np.float32)
    region = _grid_region(record, probs)
    if any(hi < lo for lo, hi in region):
        return out
    (z0, z1), (y0, y1), (x0, x1) = region
    ly, wy = _axis_interp(np.arange(y0, y1 + 1), record.start[1], record.step[1], probs.shape[1])
    lx, wx = _axis_interp(np.arange(x0, x1 + 1), record.start[2], record.step[2], probs.shape[2])
    # Only the grid rows/columns the region needs, so the per-chunk work scales with the region.
    gy0, gy1 = int(ly.min()), int(min(ly.max() + 1, probs.shape[1] - 1))
    gx0, gx1 = int(lx.min()), int(min(lx.max() + 1, probs.shape[2] - 1))
    sub = probs[:, gy0 : gy1 + 1, gx0 : gx1 + 1]
    ly, lx = ly - gy0, lx - gx0
    for zs in range(z0, z1 + 1, chunk_slices):
        ze = min(zs + chunk_slices, z1 + 1)
        lz, wz = _axis_interp(np.arange(zs, ze), record.start[0], record.step[0], probs.shape[0])
        block = _lerp(sub, 0, lz, wz)
        block = _lerp(block, 1, ly, wy)
        block = _lerp(block, 2, lx, wx)
        out[zs:ze, y0 : y1 + 1, x0 : x1 + 1] = np.argmax(block, axis=-1)
    return out


def one_hot(labels: np.ndarray, num_labels: int, dtype=np.float32) -> np.ndarray:
    """``(..., num_labels)`` one-hot encoding of an integer label array."""
    return (labels[..., None] == np.arange(num_labels)).astype(dtype)
