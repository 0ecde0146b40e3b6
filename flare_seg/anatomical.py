"""Anatomical attention (seed 000): a distance map to an anatomical landmark as an extra input channel.

Landmark: the **boundary of the localizer's coarse organ mask at 6 mm**. Seed 000 extracts its
landmarks with a separate lightweight attention network; here the localizer already is that
network: it runs on the whole image anyway, so the map costs no extra network, no extra training
and only a distance transform at 6 mm (at most 256 x 80 x 80 voxels). It tells the segmenter how
far each 2 mm voxel lies inside or outside the region where organs are (and so where a response
is anatomically implausible), which is the error the SCN's spatial part also exists to fix.
Organ centroids would need a per-organ localizer, which the bundled one is not.

Channel value: signed distance in mm (negative inside the mask, positive outside) divided by
:data:`SCALE_MM` and clipped to +-:data:`CLIP`. At training time the map is computed from the
ground-truth organ mask of the (annotated) organs and perturbed per sample (a random shift and a
random dilation/erosion, :func:`perturbation`), so the segmenter learns to tolerate the
localizer's error; at inference it comes from the localizer's prediction. NumPy/SciPy only.
"""

from __future__ import annotations

import numpy as np

from flare_seg.preprocess import GridRecord

SCALE_MM = 40.0
CLIP = 2.0
#: Perturbation at training time: shift up to this many mm per axis, dilate/erode up to this many mm.
SHIFT_MM = 8.0
OFFSET_MM = 6.0


def signed_distance_mm(mask: np.ndarray, spacing_mm) -> np.ndarray:
    """Signed Euclidean distance (mm) to the boundary of ``mask``: negative inside, positive outside.

    An empty mask is "far outside" everywhere (``CLIP * SCALE_MM``)."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, CLIP * SCALE_MM, np.float32)
    if mask.all():
        return np.full(mask.shape, -CLIP * SCALE_MM, np.float32)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_mm)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_mm)
    return (outside - inside).astype(np.float32)


def to_channel(distance_mm: np.ndarray) -> np.ndarray:
    """The network channel: distance / :data:`SCALE_MM`, clipped to +-:data:`CLIP`."""
    return np.clip(np.asarray(distance_mm, np.float32) / SCALE_MM, -CLIP, CLIP).astype(np.float32)


def _interp_axis(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``volume`` along ``axis`` at fractional ``positions`` (edge-clamped)."""
    n = volume.shape[axis]
    pos = np.clip(positions, 0.0, n - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = len(pos)
    frac = frac.reshape(shape)
    return np.take(volume, lo, axis=axis) * (1.0 - frac) + np.take(volume, hi, axis=axis) * frac


def resample_between(volume: np.ndarray, source: GridRecord, target: GridRecord) -> np.ndarray:
    """``volume`` on ``source``'s grid sampled on ``target``'s grid (both axis-aligned in the same
    input index space, as every grid here is): separable linear, clamped at the edges."""
    out = np.asarray(volume, np.float32)
    for axis in range(3):
        index_in = target.start[axis] + np.arange(target.output_shape[axis]) * target.step[axis]
        out = _interp_axis(out, (index_in - source.start[axis]) / source.step[axis], axis)
    return out


def coarse_mask_channel(coarse_mask: np.ndarray, loc_record: GridRecord, seg_record: GridRecord) -> np.ndarray:
    """Inference: the channel on the segmenter grid from the localizer's foreground mask at 6 mm."""
    distance = signed_distance_mm(coarse_mask, loc_record.spacing_mm)
    return to_channel(resample_between(distance, loc_record, seg_record))


def with_channel(x: np.ndarray, channel: np.ndarray) -> np.ndarray:
    """Stack the image ``(z, y, x)`` and the anatomical channel into ``(z, y, x, 2)``."""
    return np.stack([np.asarray(x, np.float32), np.asarray(channel, np.float32)], axis=-1)


def perturbation(rng: np.random.Generator | None, spacing_mm) -> tuple[np.ndarray, float]:
    """(shift in input voxels per axis, distance offset in mm) of one training sample; none without rng.

    A positive offset erodes the mask, a negative one dilates it (``d - offset``)."""
    if rng is None:
        return np.zeros(3, np.float32), 0.0
    shift_mm = rng.uniform(-SHIFT_MM, SHIFT_MM, size=3)
    return (shift_mm / np.asarray(spacing_mm)).astype(np.float32), float(rng.uniform(-OFFSET_MM, OFFSET_MM))
