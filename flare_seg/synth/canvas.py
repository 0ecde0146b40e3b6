"""The canvas: the tissue map being painted, with anatomy-frame coordinates of its voxels, and the
evaluation of shape fields on a coarse work grid."""

from __future__ import annotations

import numpy as np

from flare_seg.synth.fields import resize_linear, smooth_field
from flare_seg.synth.tissues import ABOVE_DOME, AIR, VISC_FAT


class Canvas:
    """The tissue map being painted, with the anatomy-frame coordinates of its voxel centres."""

    def __init__(self, shape, spacing_mm, shift_mm):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing_mm, np.float64)
        self.axes = [((np.arange(n) - (n - 1) / 2.0) * s + c).astype(np.float32)
                     for n, s, c in zip(self.shape, self.spacing, shift_mm, strict=True)]
        self.tissue = np.full(self.shape, AIR, np.uint8)

    def box(self, lo, hi):
        """Index slices of the voxels inside the physical box [lo, hi], or None if none."""
        sl = tuple(slice(int(np.searchsorted(ax, lo_ax)), int(np.searchsorted(ax, hi_ax, "right")))
                   for ax, lo_ax, hi_ax in zip(self.axes, lo, hi, strict=True))
        return None if any(s.stop <= s.start for s in sl) else sl

    def work_axes(self, sl, work_mm):
        """Coarse work-grid coordinates spanning the same first and last voxel centres as ``sl``."""
        out = []
        for ax, s, sp in zip(self.axes, sl, self.spacing, strict=True):
            n = s.stop - s.start
            n_work = n if sp >= 0.75 * work_mm else min(n, int(np.ceil((n - 1) * sp / work_mm)) + 1)
            out.append(np.linspace(ax[s.start], ax[s.stop - 1], max(n_work, 1)).astype(np.float32))
        return out

    def paint(self, sl, mask, codes, allowed):
        """Write ``codes`` where ``mask`` holds and the current tissue is allowed. ``codes`` is a
        scalar, an array like the mask, or a function of the final mask giving the codes there."""
        region = self.tissue[sl]
        m = mask & lut(allowed)[region]
        region[m] = codes(m) if callable(codes) else (codes if np.isscalar(codes) else codes[m])


def lut(codes):
    table = np.zeros(256, bool)
    table[list(codes)] = True
    return table


CAVITY = (VISC_FAT,)
THORAX = (VISC_FAT, ABOVE_DOME)


def evaluate_fields(cv, lo, hi, work_mm, warp, fn):
    """Evaluate ``fn(q, axes) -> list of fields`` on the work grid of the box, upsampled to voxels.

    ``warp`` is None or ``(coef (3, n, n, n), amplitude_mm)``: a smooth random displacement of
    the coordinates over the physical box. Returns (slices, fields) or None outside the FOV.
    """
    sl = cv.box(lo, hi)
    if sl is None:
        return None
    axes = cv.work_axes(sl, work_mm)
    q = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    if warp is not None:
        coef, amp = warp
        q = [qi + amp * smooth_field(coef[i], lo, hi, axes) for i, qi in enumerate(q)]
    shape, work_shape = tuple(s.stop - s.start for s in sl), tuple(len(a) for a in axes)
    fields = (np.require(np.broadcast_to(f, work_shape), np.float32, "CW") for f in fn(q, axes))
    return sl, [resize_linear(f, shape) for f in fields]

