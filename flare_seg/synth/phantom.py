"""Synthetic abdominal CT phantoms, NumPy and SciPy only (no TensorFlow, Keras or SimpleITK).

* :func:`make_phantom` draws a whole parametric abdomen: body wall (skin, fat, muscle), spine,
  ribs, lungs above the diaphragm, heart, vessels, liver, kidneys, spleen, pancreas, stomach,
  gallbladder, duodenum, colon and small bowel, in a random contrast phase, with blur and noise.
* :func:`phantom_from_label_map` puts a synthetic body around a real label map and gives every
  class a random intensity (SynthSeg-style domain randomization).

The anatomy lives in an *anatomy frame*: millimetres, ``(z, y, x)`` like the arrays, canonical LPS
directions (x towards the patient's left, y posterior, z superior). Its origin is the centre of
the body's cross-section, at about the middle of the abdominal organ block; the centre of the
field of view lies at ``field_of_view_shift_mm`` in it. Every random draw is made before any
voxel is touched and none depends on the grid, so one seed gives the same body at any size and
spacing; only the noise depends on the grid. Shapes are evaluated in each structure's bounding
box on a coarse work grid (about 2-3 mm) and upsampled linearly before thresholding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from flare_seg import labels as flare_labels

log = logging.getLogger(__name__)

#: Mean HU of the real portal-venous slab (TotalSegmentator pseudo labels) to compare realism against.
REAL_SLAB_MEAN_HU = {"liver": 89.0, "spleen": 80.0, "pancreas": 61.0}

PHASES = ("non_contrast", "arterial", "portal_venous", "delayed")

# Tissue codes of the internal tissue map (uint8). Codes >= _LM_BASE are classes of a label map.
(AIR, SKIN, SUBCUT_FAT, MUSCLE, VISC_FAT, ABOVE_DOME, LUNG, CORTICAL, CANCELLOUS, DISC, CSF,
 CARTILAGE, TABLE, ARTERY, VEIN, PORTAL, HEART_BLOOD, MYOCARDIUM, LIVER, LIVER_VESSEL,
 KIDNEY_CORTEX, KIDNEY_MEDULLA, URINE, SPLEEN, PANCREAS, BILE, BOWEL_WALL, BOWEL_FLUID, GAS,
 STOOL) = range(30)
_LM_BASE = 64
_TISSUE_LABEL = {LIVER: flare_labels.LIVER, LIVER_VESSEL: flare_labels.LIVER,
                 KIDNEY_CORTEX: flare_labels.KIDNEY, KIDNEY_MEDULLA: flare_labels.KIDNEY,
                 SPLEEN: flare_labels.SPLEEN, PANCREAS: flare_labels.PANCREAS}

#: HU ranges (uniform draws) of the tissues whose value does not depend on the contrast phase.
STATIC_HU = {AIR: (-1010, -990), SKIN: (20, 60), SUBCUT_FAT: (-115, -85), VISC_FAT: (-105, -80),
             LUNG: (-880, -820), CORTICAL: (700, 1200), CANCELLOUS: (170, 300), DISC: (70, 110),
             CSF: (5, 30), CARTILAGE: (100, 180), TABLE: (150, 400), BILE: (0, 20),
             BOWEL_FLUID: (0, 25), GAS: (-1000, -960), STOOL: (-40, 40)}
_PHASE_TISSUES = (MUSCLE, ARTERY, VEIN, PORTAL, HEART_BLOOD, MYOCARDIUM, LIVER, LIVER_VESSEL,
                  KIDNEY_CORTEX, KIDNEY_MEDULLA, URINE, SPLEEN, PANCREAS, BOWEL_WALL)
#: Phase-dependent HU ranges, in the order of ``_PHASE_TISSUES``: muscle, aorta, IVC, portal
#: vein, heart blood, myocardium, liver, liver vessels, kidney cortex, kidney medulla, urine,
#: spleen, pancreas, bowel wall.
PHASE_HU = {
    "non_contrast": ((40, 55), (35, 50), (35, 50), (35, 50), (35, 50), (40, 55), (52, 66),
                     (35, 48), (28, 40), (25, 38), (0, 15), (42, 52), (38, 50), (35, 50)),
    "arterial": ((50, 65), (250, 400), (70, 120), (110, 170), (200, 350), (90, 130), (65, 85),
                 (75, 115), (180, 260), (70, 110), (0, 15), (100, 140), (100, 130), (80, 120)),
    "portal_venous": ((50, 65), (140, 200), (120, 180), (150, 200), (130, 180), (90, 120),
                      (80, 96), (140, 185), (150, 190), (140, 180), (5, 20), (74, 92), (64, 82),
                      (70, 110)),
    "delayed": ((50, 60), (90, 130), (90, 130), (90, 130), (90, 130), (70, 100), (65, 85),
                (85, 120), (120, 170), (130, 190), (200, 900), (65, 85), (55, 75), (60, 90)),
}


@dataclass(frozen=True)
class PhantomConfig:
    """Ranges of the random draws; ``(lo, hi)`` pairs are uniform. Defaults: adult, mostly portal venous."""

    cavity_half_width_mm: tuple[float, float] = (115.0, 140.0)  # inside the lateral muscle wall
    cavity_depth_mm: tuple[float, float] = (95.0, 125.0)  # vertebral body centre to anterior wall
    subcutaneous_fat_mm: tuple[float, float] = (6.0, 35.0)
    muscle_wall_mm: tuple[float, float] = (7.0, 13.0)
    organ_scale: tuple[float, float] = (0.88, 1.12)
    organ_shift_mm: float = 7.0  # standard deviation of each organ's position jitter
    organ_rotation_deg: float = 6.0  # standard deviation of each organ's pose angles
    height_scale: tuple[float, float] = (0.92, 1.08)
    deformation_mm: float = 6.0  # amplitude of the smooth random displacement of organ shapes
    phase_weights: tuple[tuple[str, float], ...] = (
        ("non_contrast", 0.1), ("arterial", 0.1), ("portal_venous", 0.7), ("delayed", 0.1))
    noise_sigma_hu: tuple[float, float] = (8.0, 16.0)
    kernel_smoothing: tuple[float, float] = (0.08, 0.25)  # in-plane [w, 1-2w, w] blur of image and noise
    slice_thickness_mm: tuple[float, float] = (1.0, 5.0)
    gas_probability: float = 0.85
    oral_contrast_probability: float = 0.1
    gallbladder_probability: float = 0.9
    table_probability: float = 0.7
    label_map_hu: tuple[float, float] = (-50.0, 250.0)  # per-class HU in phantom_from_label_map
    bias_field_hu: tuple[float, float] = (0.0, 30.0)  # amplitude of the smooth additive bias field


# ----------------------------------------------------------------------------- small math helpers
def _u(rng, lo_hi):
    return float(rng.uniform(*lo_hi))


def _basis(t, lo, hi, n):
    """Gaussian bumps on ``n`` knots spanning [lo, hi] mm, evaluated at ``t``: shape (len(t), n)."""
    knots = np.linspace(lo, hi, n)
    step = (hi - lo) / max(n - 1, 1) if hi > lo else 1.0
    return np.exp(-0.5 * ((np.asarray(t, np.float64)[:, None] - knots) / (0.8 * step)) ** 2)


def _smooth_field(coef, lo, hi, axes):
    """Unit-variance smooth random field from coefficients ``coef`` (nz, ny, nx) on knots spanning
    the physical box [lo, hi], evaluated on the grid of the 1-D ``axes``: resolution independent."""
    bz, by, bx = (_basis(a, lo[i], hi[i], coef.shape[i]) for i, a in enumerate(axes))
    f = np.tensordot(bz, np.matmul(by, np.matmul(coef, bx.T)), axes=(1, 0))
    norm = np.sqrt(np.einsum("ij,ij->i", bz, bz)[:, None, None] * np.einsum("ij,ij->i", by, by)[
        None, :, None] * np.einsum("ij,ij->i", bx, bx)[None, None, :])
    return (f / np.maximum(norm, 1e-6)).astype(np.float32)


def _profile(coef, t, lo=-400.0, hi=400.0):
    """Smooth random 1-D profiles (rows of ``coef``) of unit variance at positions ``t`` mm."""
    b = _basis(np.clip(t, lo, hi), lo, hi, coef.shape[-1])
    return (b @ coef.T / np.sqrt(np.sum(b * b, axis=1, keepdims=True))).T


def _rotation(angles_rad):
    """3x3 rotation acting on (z, y, x) vectors, from angles about the z, y and x axes."""
    az, ay, ax = angles_rad
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(q, centre, semi):
    """Approximate signed distance (mm) to an ellipsoid; ``semi`` entries may be (neg, pos) pairs."""
    acc = 0.0
    for qi, ci, si in zip(q, centre, semi, strict=True):
        d = qi - ci
        s = np.where(d < 0, si[0], si[1]) if isinstance(si, tuple) else si
        acc = acc + (d / s) ** 2
    smin = min(min(s) if isinstance(s, tuple) else s for s in semi)
    return (np.sqrt(acc) - 1.0) * smin


def _smin(a, b, k):
    """Polynomial smooth minimum (smooth union of two signed distances), blend width ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _chain_sdf(q, pts, radii, axes=None, margin_mm=0.0):
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


def _resize_linear(a, shape):
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


# ----------------------------------------------------------------------------- the canvas
class _Canvas:
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
        m = mask & _lut(allowed)[region]
        region[m] = codes(m) if callable(codes) else (codes if np.isscalar(codes) else codes[m])


def _lut(codes):
    table = np.zeros(256, bool)
    table[list(codes)] = True
    return table


_CAVITY = (VISC_FAT,)
_THORAX = (VISC_FAT, ABOVE_DOME)


def _fields(cv, lo, hi, work_mm, warp, fn):
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
        q = [qi + amp * _smooth_field(coef[i], lo, hi, axes) for i, qi in enumerate(q)]
    shape, work_shape = tuple(s.stop - s.start for s in sl), tuple(len(a) for a in axes)
    fields = (np.require(np.broadcast_to(f, work_shape), np.float32, "CW") for f in fn(q, axes))
    return sl, [_resize_linear(f, shape) for f in fields]


# ----------------------------------------------------------------------------- body wall, ribs, lungs
def _draw_body(rng, cfg):
    """Body outline, layers, diaphragm, ribs and table."""
    b = SimpleNamespace(
        a_cav=_u(rng, cfg.cavity_half_width_mm), depth=_u(rng, cfg.cavity_depth_mm),
        p_post=_u(rng, (2.3, 3.2)), fat=_u(rng, cfg.subcutaneous_fat_mm), muscle=_u(rng, cfg.muscle_wall_mm),
        fat_ratios=rng.uniform((0.5, 1.0, 0.4), (0.9, 1.6, 0.8)),  # lateral, anterior, posterior
        prof=rng.standard_normal((11, 14)), irr_amp=_u(rng, (0.6, 1.4)), sz=_u(rng, cfg.height_scale),
        table=bool(rng.random() < cfg.table_probability), table_gap=_u(rng, (3.0, 20.0)),
        table_curve=_u(rng, (0.0004, 0.0012)), rib_pitch=_u(rng, (25.0, 31.0)),
        rib_drop=_u(rng, (190.0, 240.0)), rib_half_h=_u(rng, (5.0, 7.0)), rib_z0=float(rng.normal(15, 8)),
        dome_top=float(rng.normal(95, 7)), dome_left_drop=_u(rng, (8.0, 25.0)),
        dome_k=rng.uniform((0.006, 0.004), (0.010, 0.007)), spine_back=_u(rng, (70.0, 80.0)),
        cavity_back=_u(rng, (50.0, 64.0)))
    b.rib_z0 *= b.sz
    b.dome_top *= b.sz
    return _derive_body(b)


def _derive_body(b):
    """Outer axes and spine position from the cavity size and layers; the body is centred in y."""
    fat_lat, fat_ant, fat_post = b.fat * b.fat_ratios
    b.vb = (b.depth + fat_ant - b.spine_back - fat_post) / 2.0
    b.a = b.a_cav + b.muscle + fat_lat
    b.b_ant = b.depth - b.vb + b.muscle + fat_ant
    b.b_post = b.vb + b.spine_back + b.muscle + fat_post
    b.sx, b.sy = b.a_cav / 128.0, b.depth / 110.0
    return b


def _body_profiles(b, z):
    """Per-slice body axes, layer thicknesses and outline harmonics at anatomy heights ``z``."""
    f = _profile(b.prof, z).astype(np.float32)
    hips = np.clip((-150.0 - z) / 100.0, 0, 1)
    chest = np.clip((z - 150.0) / 150.0, 0, 1)
    a = b.a * (1 + 0.04 * f[0]) * (1 + 0.08 * hips) * (1 - 0.06 * chest)
    fat = np.maximum(b.fat * (1 + 0.25 * f[3]) * (1 + 0.3 * hips), 2.0)
    return dict(a=a, b_ant=b.b_ant * (1 + 0.05 * f[1]) * (1 - 0.1 * chest),
                b_post=b.b_post * (1 + 0.02 * f[2]), fat=fat, muscle=b.muscle * (1 + 0.1 * f[4]),
                irr=b.irr_amp * f[5:11] * np.array([0.02, 0.02, 0.012, 0.012, 0.007, 0.007])[:, None])


def _superellipse(y, x, a, b_ant, b_post, p):
    """Outer sum ``(x/a)^2 + |y/b|^p`` with a flatter (exponent p) posterior half."""
    yt = np.where(y < 0, (y / b_ant) ** 2, np.abs(y / b_post) ** p)
    return yt[:, None] + ((x / a) ** 2)[None, :]


def _dome(b, yy, xx):
    """Height (anatomy z, mm) of the diaphragm over the axial plane: right dome higher than left."""
    dy = yy - (b.vb - 40.0)
    ky = np.where(dy < 0, 0.5, 1.0) * b.dome_k[1] * dy ** 2 + 0.003 * np.maximum(yy - b.vb, 0) ** 2
    right = b.dome_top - b.dome_k[0] * (xx + 60 * b.sx) ** 2 - ky
    left = b.dome_top - b.dome_left_drop - b.dome_k[0] * (xx - 55 * b.sx) ** 2 - ky
    tendon = b.dome_top - b.dome_left_drop - 12.0 - 0.002 * xx ** 2 - ky  # central tendon under the heart
    return np.maximum(np.maximum(right, left), np.maximum(tendon, b.dome_top - 110.0)).astype(np.float32)


def _paint_body(cv, b):
    zs, ys, xs = cv.axes
    prof = _body_profiles(b, zs)
    r = (np.searchsorted(ys, -1.3 * max(b.b_ant, b.b_post)), np.searchsorted(ys, 1.3 * b.b_post, "right"))
    c = (np.searchsorted(xs, -1.35 * b.a), np.searchsorted(xs, 1.35 * b.a, "right"))
    y, x = ys[r[0]:r[1]], xs[c[0]:c[1]]
    yy, xx = y[:, None], x[None, :]
    phi_bin = np.rint((np.arctan2(yy, xx) + np.pi) / (2 * np.pi) * 255).astype(np.intp)
    ang = np.linspace(-np.pi, np.pi, 256)
    harm = np.stack([f(k * ang) for k in (2, 3, 4) for f in (np.cos, np.sin)])
    psi = (np.arctan2(np.abs(xx), yy) / np.pi).astype(np.float32)  # 0 posterior .. 1 anterior midline
    rr = np.maximum(np.hypot(yy, xx), 1e-3)
    dirs = (yy / rr, xx / rr)
    dome = _dome(b, yy, xx)
    if b.table:
        yt = b.b_post + b.table_gap - b.table_curve * xs[None, :] ** 2
        dy = ys[:, None] - yt
        cv.tissue[:, (((dy > 0) & (dy < 5)) | ((dy > 35) & (dy < 38))) & (np.abs(xs) < 230)[None, :]] = TABLE
    for iz, z in enumerate(zs):
        a, ba, bp, fat, mus = (prof[k][iz] for k in ("a", "b_ant", "b_post", "fat", "muscle"))
        t2 = ((1.0 + prof["irr"][:, iz] @ harm) ** 2).astype(np.float32)[phi_bin]
        s_out = _superellipse(y, x, a, ba, bp, b.p_post)
        fl, fa, fp = fat * b.fat_ratios
        s_fat = _superellipse(y, x, a - fl, ba - fa, bp - fp, b.p_post)
        cav_axes = (a - fl - mus, ba - fa - mus, b.vb + b.cavity_back)
        s_cav = _superellipse(y, x, *cav_axes, b.p_post)
        sl = cv.tissue[iz, r[0]:r[1], c[0]:c[1]]
        body = s_out < t2
        sl[body] = SUBCUT_FAT
        sl[body & (s_out > t2 * (1 - 2.5 / min(a, ba, bp)) ** 2)] = SKIN
        in_fat, cav = s_fat < t2, s_cav < t2
        sl[in_fat] = MUSCLE
        sl[cav] = VISC_FAT
        above = cav & (dome < z)
        sl[cav & (dome < z + 5.0) & ~above] = MUSCLE  # the diaphragm
        sl[above] = ABOVE_DOME
        if z > b.rib_z0 - b.rib_drop - 20:
            near = (s_cav < t2 * (1 + 12.0 / min(cav_axes)) ** 2) & ~cav  # within ~12 mm of the cavity
            _paint_ribs(sl, b, z, near & in_fat, s_cav, t2, psi, dirs, cav_axes)


def _paint_ribs(sl, b, z, band, s_cav, t2, psi, dirs, cav_axes):
    """Ribs as oval bones just outside the cavity, descending anteriorly; costal cartilage; sternum."""
    idx = np.nonzero(band)
    dy, dx = dirs[0][idx], dirs[1][idx]
    radius = 1.0 / np.sqrt((dx / cav_axes[0]) ** 2 + (dy / np.where(dy < 0, cav_axes[1], cav_axes[2])) ** 2)
    out_mm = (np.sqrt(s_cav[idx] / t2[idx]) - 1.0) * radius  # distance outside the cavity
    frac = (out_mm - 1.0) / 9.0  # a 9 mm thick rib, 1 mm outside the cavity
    ps = psi[idx]
    u = (z - b.rib_z0 + b.rib_drop * ps) / b.rib_pitch
    k = np.rint(u)
    e = ((frac - 0.5) / 0.5) ** 2 + ((u - k) * b.rib_pitch / b.rib_half_h) ** 2
    rib = (e < 1) & (k >= 0) & (ps >= 0.16) & (ps <= np.minimum(0.42 + 0.08 * k, 0.93))
    sternum = (ps > 0.93) & (z > b.dome_top - 25) & (np.abs(frac - 0.5) < 0.42)
    code = np.where(ps > 0.72, CARTILAGE, np.where(e > 0.4, CORTICAL, CANCELLOUS))
    code = np.where(sternum, np.where(np.abs(frac - 0.5) > 0.3, CORTICAL, CANCELLOUS), code)
    ok = rib | sternum
    sl[idx[0][ok], idx[1][ok]] = code[ok]


# ----------------------------------------------------------------------------- spine and back muscles
def _draw_spine(rng, b):
    return SimpleNamespace(
        vb=b.vb, rx=_u(rng, (20.0, 25.0)), ry=_u(rng, (15.0, 19.0)), pitch=_u(rng, (28.0, 34.0)) * b.sz,
        disc=_u(rng, (6.0, 10.0)), phase=_u(rng, (0.0, 40.0)), canal=_u(rng, (8.0, 11.0)),
        psoas_top=-30.0 * b.sz, psoas_max=_u(rng, (18.0, 27.0)), back=b.spine_back)


def _disc2d(yy, xx, p0, p1, r):
    """2-D capsule mask between points (y, x) p0 and p1 with radius r."""
    d = np.subtract(p1, p0)
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d), 0, 1)
    return (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2 < r * r


def _paint_spine(cv, s):
    """Vertebral bodies (cortex, cancellous core, discs), neural arch, processes, psoas, erectors."""
    zs = cv.axes[0]
    sl = cv.box((zs[0], s.vb - s.ry - 5, -110.0), (zs[-1], s.vb + s.ry + s.back + 40, 110.0))
    if sl is None:
        return
    yy, xx = cv.axes[1][sl[1]][:, None], cv.axes[2][sl[2]][None, :]
    dy = yy - s.vb
    body = (xx / s.rx) ** 2 + (dy / s.ry) ** 2 < 1
    core = (xx / (s.rx - 1.8)) ** 2 + (dy / (s.ry - 1.8)) ** 2 < 1
    yc = s.vb + s.ry + s.canal + 2
    rc2 = xx ** 2 + (yy - yc) ** 2
    canal, arch = rc2 < s.canal ** 2, (rc2 < (s.canal + 6) ** 2) & (yy > s.vb)
    spinous = _disc2d(yy, xx, (yc + s.canal + 3, 0), (yc + s.canal + s.back - 40, 0), 3.5)
    transverse = _disc2d(yy, xx, (yc - 4, -10), (yc + 2, -s.rx - 22), 3.5) | _disc2d(
        yy, xx, (yc - 4, 10), (yc + 2, s.rx + 22), 3.5)
    erector = ((np.abs(xx) - s.rx - 12) / 32) ** 2 + ((yy - yc - 22) / 34) ** 2 < 1  # erector spinae
    quadratus = ((np.abs(xx) - s.rx - 38) / 20) ** 2 + ((dy - 42) / 14) ** 2 < 1  # quadratus lumborum
    bone_ok, soft_ok = _lut((VISC_FAT, ABOVE_DOME, MUSCLE, SUBCUT_FAT)), _lut(_THORAX)
    for iz, z in enumerate(zs):
        ph = (z - s.phase) % s.pitch
        region = cv.tissue[iz][sl[1:]]
        inner = CANCELLOUS if s.disc + 1.6 < ph < s.pitch - 1.6 else CORTICAL  # endplates
        code = np.where(canal, CSF, np.where(ph < s.disc, DISC, np.where(core, inner, CORTICAL)))
        parts = canal | body
        if s.disc + 2 < ph < s.pitch - 3:
            parts |= arch | (spinous if ph < 0.65 * s.pitch else False)
            if ph < s.disc + 10 and z < -20:
                parts |= transverse
        m = parts & bone_ok[region]
        region[m] = code[m]
        muscle = erector | quadratus if z < s.psoas_top + 20 else erector
        if z < s.psoas_top:
            rp = min(s.psoas_max, 7 + 0.22 * (s.psoas_top - z))
            muscle = muscle | (((np.abs(xx) - s.rx - 0.75 * rp - 3) / (0.85 * rp)) ** 2
                               + ((dy - 4 + 0.2 * rp) / rp) ** 2 < 1)  # psoas
        region[muscle & soft_ok[region]] = MUSCLE


# ----------------------------------------------------------------------------- organs and vessels
def _spec(kind, pts, radii=None, margin=0.0, **kw):
    """A structure to paint: its kind, physical box (z, y, x mm) and parameters."""
    pts = np.atleast_2d(np.asarray(pts, np.float64))
    r = 0.0 if radii is None else float(np.max(radii))
    return SimpleNamespace(kind=kind, pts=pts, radii=radii, lo=pts.min(0) - r - margin,
                           hi=pts.max(0) + r + margin, **kw)


def _placer(b):
    """Map (z, y relative to the spine, x) template points onto this body (scaled, anatomy mm)."""
    def place(rel):
        rel = np.atleast_2d(np.asarray(rel, np.float64))
        y = np.where(rel[:, 1] < 0, rel[:, 1] * b.sy, rel[:, 1])
        return np.stack([rel[:, 0] * b.sz, b.vb + y, rel[:, 2] * b.sx], axis=1)
    return place


_VESSELS = (  # (code, radii, template points (z, y rel. spine, x))
    (ARTERY, (13, 12, 12, 11, 10), ((320, -8, 32), (120, -14, 24), (60, -30, 12), (-40, -34, 12),
                                    (-135, -36, 6))),
    (ARTERY, (7, 6.5, 6), ((-135, -36, 6), (-200, -28, 45), (-320, -10, 75))),
    (ARTERY, (7, 6.5, 6), ((-135, -36, 6), (-200, -28, -45), (-320, -10, -75))),
    (VEIN, (11, 12, 12, 13, 13), ((-140, -32, -18), (-40, -32, -22), (40, -35, -25), (95, -25, -20),
                                  (125, -45, -10))),
    (VEIN, (9, 8, 8), ((-140, -32, -18), (-200, -18, -50), (-320, 0, -80))),
    (VEIN, (9, 8, 8), ((-140, -32, -18), (-200, -18, 40), (-320, 0, 75))),
    (PORTAL, (8, 8, 7.5), ((-28, -58, -2), (0, -52, -20), (18, -45, -40))),
    (PORTAL, (5, 5, 4.5, 4), ((-28, -58, -2), (-20, -45, 25), (-5, -30, 50), (12, -8, 65))),
    (PORTAL, (7, 6, 4), ((-28, -58, -2), (-80, -80, -12), (-160, -85, -18))),
    (ARTERY, (4.5, 4.5, 4, 3), ((-30, -34, 12), (-45, -62, 8), (-90, -80, 2), (-160, -85, -2))),
    (VEIN, (5, 5, 5), ((-42, 2, 40), (-40, -52, 14), (-40, -34, -20))),
    (VEIN, (6, 6), ((-48, -2, -35), (-42, -30, -22))),
    (BOWEL_WALL, (8, 8, 9, 10), ((320, -25, 5), (90, -32, 12), (65, -40, 30), (55, -35, 45))),
)
_LIVER_VESSELS = (  # radii, points (z, y rel. spine, x): hepatic veins, then portal branches
    ((6, 4, 2.5), ((90, -30, -20), (60, -10, -70), (20, 0, -100))),
    ((5.5, 4, 2.5), ((90, -35, -15), (55, -65, -35), (15, -85, -45))),
    ((5, 3.5, 2.5), ((90, -40, -8), (70, -75, 15), (55, -90, 45))),
    ((7, 5.5, 3), ((18, -45, -40), (20, -35, -70), (-15, -25, -95))),
    ((5, 3), ((20, -35, -70), (50, -20, -88))),
    ((6, 4.5, 3), ((18, -45, -40), (28, -65, -10), (40, -80, 25))),
)
_LIVER_ANCHOR = (30.0, -35.0, -45.0)
_PANCREAS = ((12, 17, 11, 12, 10, 8), ((-60, -35, -22), (-42, -45, -28), (-25, -62, -5), (-15, -55, 30),
                                       (-2, -35, 52), (8, -18, 62)))
_STOMACH = ((38, 38, 32, 22, 12),
            ((75, -15, 50), (45, -45, 62), (15, -75, 55), (-10, -95, 20), (-15, -85, -12)))
_DUODENUM = ((12, 13, 13, 13, 12, 12, 12),
             ((-15, -85, -12), (-15, -70, -35), (-30, -45, -58), (-75, -38, -55), (-85, -45, -10),
              (-80, -48, 20), (-55, -48, 32)))
_COLON = ((32, 26, 25, 22, 22, 22, 21, 20, 20, 18, 17),
          ((-170, -60, -70), (-90, -30, -100), (-45, -50, -90), (-40, -100, -45), (-55, -110, 0),
           (-45, -100, 45), (-5, -50, 95), (-60, -5, 102), (-140, -15, 98), (-190, -45, 60), (-215, -60, 10)))


def _pose(rng, sd_deg, base_deg=(0.0, 0.0, 0.0)):
    """A rotation by ``base_deg`` (about z, y, x) plus normal jitter of ``sd_deg``."""
    return _rotation(np.deg2rad(np.asarray(base_deg) + rng.normal(0, sd_deg, 3)))


def _warp(rng, cfg, n=4, scale=1.0):
    return rng.standard_normal((3, n, n, n)), cfg.deformation_mm * scale


def _draw_vessels(rng, b):
    place = _placer(b)
    out = []
    for code, radii, pts in _VESSELS:
        p = place(pts) + rng.normal(0, 3.0, 3)
        out.append(_spec("tube", p, np.asarray(radii) * _u(rng, (0.9, 1.1)), code=code, allowed=_THORAX,
                         warp=None, work_mm=2.5))
    heart = place((b.dome_top / b.sz + 35, -55, 25))[0] + rng.normal(0, 5, 3)
    out.append(_spec("heart", heart, 80.0, R=_pose(rng, 8.0, (0, 15, 35)),
                     semi=rng.uniform((55, 48, 65), (65, 58, 80)), myo=_u(rng, (8.0, 12.0)), work_mm=3.0))
    return out


def _draw_solid_organs(rng, cfg, b):
    place, rot = _placer(b), cfg.organ_rotation_deg
    out = []
    for side, rel in ((1.0, (-50, 5, -52)), (-1.0, (-42, 6, 58))):  # right kidney, then left
        semi = np.array([55.0, 24.0, 30.0]) * _u(rng, cfg.organ_scale) * rng.uniform(0.93, 1.07, 3)
        c = place(rel)[0] + rng.normal(0, cfg.organ_shift_mm, 3)
        out.append(_spec("kidney", c, semi.max() + 12, warp=_warp(rng, cfg, scale=0.6), semi=semi, side=side,
                         R=_pose(rng, rot, (side * 30, -side * 12, 15)), cortex=_u(rng, (5.0, 8.0)),
                         work_mm=2.0))
    semi = np.array([52.0, 22.0, 48.0]) * _u(rng, cfg.organ_scale) * rng.uniform(0.93, 1.07, 3)
    c = place((16, 12, 80))[0] + rng.normal(0, cfg.organ_shift_mm, 3)
    normal_deg = np.rad2deg(np.arctan2(-c[2], -(c[1] - b.vb + 40)))
    out.append(_spec("spleen", c, semi.max() + 15, warp=_warp(rng, cfg), semi=semi,
                     R=_pose(rng, rot, (normal_deg, 0, 0)), work_mm=2.5))
    if rng.random() < cfg.gallbladder_probability:
        c = place((-22, -40, -62))[0] + rng.normal(0, cfg.organ_shift_mm, 3)
        semi = np.array([34.0, 14.0, 15.0]) * _u(rng, (0.7, 1.2))
        out.append(_spec("gallbladder", c, semi.max() + 10, warp=_warp(rng, cfg, scale=0.5), semi=semi,
                         R=_pose(rng, rot, (0, 0, 35)), work_mm=2.0))
    anchor = place(_LIVER_ANCHOR)[0] + rng.normal(0, cfg.organ_shift_mm, 3)
    scale = _u(rng, cfg.organ_scale) * rng.uniform(0.94, 1.06, 3)
    vessels = [(np.asarray(r, float), np.subtract(p, _LIVER_ANCHOR)) for r, p in _LIVER_VESSELS]
    liver = _spec("liver", anchor, 0.0, warp=_warp(rng, cfg, n=5), R=_pose(rng, rot), scale=scale,
                  vessels=vessels, left_lobe=_u(rng, (0.8, 1.2)), work_mm=3.0)
    liver.lo = anchor + np.array([-115.0, -115.0, -120.0]) * scale
    liver.hi = anchor + np.array([110.0, 115.0, 165.0]) * scale
    out.append(liver)
    radii, pts = _PANCREAS
    p = place(pts) + rng.normal(0, 4.0, (len(pts), 3)) + rng.normal(0, cfg.organ_shift_mm * 0.7, 3)
    pancreas = _spec("tube", p, np.asarray(radii) * _u(rng, cfg.organ_scale), margin=10.0, code=PANCREAS,
                     allowed=_CAVITY, warp=_warp(rng, cfg, scale=0.6), work_mm=2.0)
    out.append(_lobulated(rng, pancreas))
    return out


def _lobulated(rng, spec, knot_mm=9.0, amp_mm=2.0):
    """Attach a fine random surface field (lobulated outline) to a spec."""
    n = np.maximum(np.ceil((spec.hi - spec.lo) / knot_mm).astype(int) + 1, 2)
    spec.lobes = (rng.standard_normal(tuple(n)), amp_mm)
    return spec


def _draw_hollow_organs(rng, cfg, b):
    place = _placer(b)
    gas = rng.random(4) < cfg.gas_probability
    out = []
    for (radii, pts), wall, gas_mm in ((_STOMACH, 5.0, 45.0), (_DUODENUM, 3.0, 12.0)):
        p = place(pts) + rng.normal(0, 5.0, (len(pts), 3))
        r = np.asarray(radii) * _u(rng, (0.8, 1.15))
        level = float(np.min(p[:, 1] - r)) + (_u(rng, (3.0, gas_mm)) if gas[len(out)] else -1e3)
        out.append(_spec("viscus", p, r, code=BOWEL_FLUID, wall=wall, gas_y=level, warp=_warp(rng, cfg),
                         margin=10.0, work_mm=2.5))
    radii, pts = _COLON
    p, r = place(pts) + rng.normal(0, 6.0, (len(pts), 3)), np.asarray(radii) * _u(rng, (0.8, 1.15))
    gas_thr = _u(rng, (-0.3, 0.6)) if gas[2] else 9.0
    for part in (slice(0, 4), slice(3, 7), slice(6, None)):  # ascending, transverse, descending+sigmoid
        colon = _spec("viscus", *_haustra(p[part], r[part]), code=STOOL, wall=3.0, gas_y=None,
                      warp=_warp(rng, cfg), margin=10.0, work_mm=3.0, gas_thr=gas_thr)
        out.append(_lobulated(rng, colon, knot_mm=12.0))
    sb = _spec("bowel", place([(-280, -130, -125), (-20, 40, 125)]), None, warp=None, work_mm=3.0,
               thr=_u(rng, (-0.4, 0.1)), gas_thr=_u(rng, (1.4, 2.2)) if gas[3] else 9.0)
    n = np.ceil((sb.hi - sb.lo) / 13.0).astype(int) + 1
    sb.coef, sb.gas_coef = rng.standard_normal(tuple(n)), rng.standard_normal(tuple(np.maximum(n // 2, 2)))
    out.append(sb)
    return out


def _haustra(pts, radii, step_mm=18.0):
    """Resample a chain at ``step_mm`` with alternating radius: haustral folds."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.arange(0.0, s[-1] + 1e-6, step_mm / 2)
    p = np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], axis=1)
    r = np.interp(t, s, radii) * (1.0 + 0.12 * np.cos(np.pi * np.arange(len(t))))
    return p, r


def _local(q, centre, R, scale=1.0):
    """Coordinates of ``q`` in a structure's own frame: rotated by R^T about ``centre``, scaled."""
    d = [qi - ci for qi, ci in zip(q, centre, strict=True)]
    scale = np.broadcast_to(np.asarray(scale, np.float64), (3,))
    return [sum(R[j, i] * d[j] for j in range(3)) / scale[i] for i in range(3)]


def _paint_tube(cv, s):
    amp = s.warp[1] if s.warp else 0.0

    def fn(q, axes):
        d = _chain_sdf(q, s.pts, s.radii, axes, margin_mm=3 * amp)
        if getattr(s, "lobes", None) is not None:
            d += s.lobes[1] * _smooth_field(s.lobes[0], s.lo, s.hi, axes)
        return [d]
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, fn)
    if res:
        cv.paint(res[0], res[1][0] < 0, s.code, s.allowed)


def _paint_viscus(cv, s):
    """Hollow organ: wall, then gas above a level (supine: anterior) or in random pockets, fluid."""
    amp = s.warp[1]

    def fn(q, axes):
        d = _chain_sdf(q, s.pts, s.radii, axes, margin_mm=3 * amp)
        if s.gas_y is not None:
            return [d]
        g = _smooth_field(s.lobes[0], s.lo, s.hi, axes)
        return [d + s.lobes[1] * g, g]
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, fn)
    if not res:
        return
    sl, f = res
    if s.gas_y is not None:
        gas = (cv.axes[1][sl[1]] < s.gas_y)[None, :, None]
    else:
        gas = f[1] > s.gas_thr

    def codes(m):
        gas_m = np.broadcast_to(gas, m.shape)[m]
        return np.where(f[0][m] > -s.wall, BOWEL_WALL, np.where(gas_m, GAS, s.code)).astype(np.uint8)
    cv.paint(sl, f[0] < 0, codes, _CAVITY)


def _paint_bowel(cv, s):
    """Small-bowel loops: blobs of a smooth random field, fewer towards the upper abdomen."""
    def fn(q, axes):
        return [_smooth_field(s.coef, s.lo, s.hi, axes), _smooth_field(s.gas_coef, s.lo, s.hi, axes)]
    res = _fields(cv, s.lo, s.hi, s.work_mm, None, fn)
    if not res:
        return
    sl, (g, g2) = res
    z = cv.axes[0][sl[0]][:, None, None]
    y = cv.axes[1][sl[1]][None, :, None]
    # fewer loops towards the top and the back of the box
    g -= s.thr + 1.2 * (np.clip((z - s.hi[0] + 60.0) / 50.0, 0, 1)
                        + np.clip((y - s.hi[1] + 50.0) / 40.0, 0, 1))
    cv.paint(sl, g > 0, lambda m: np.where(g[m] < 0.25, BOWEL_WALL, np.where(
        g2[m] > s.gas_thr, GAS, BOWEL_FLUID)).astype(np.uint8), _CAVITY)


def _paint_heart(cv, s):
    res = _fields(cv, s.lo, s.hi, s.work_mm, None,
                  lambda q, axes: [_ellipsoid(_local(q, s.pts[0], s.R), (0, 0, 0), tuple(s.semi))])
    if res:
        sl, (e,) = res
        cv.paint(sl, e < 0, np.where(e > -s.myo, MYOCARDIUM, HEART_BLOOD).astype(np.uint8), (ABOVE_DOME,))
        cv.paint(sl, e < 5, VISC_FAT, (ABOVE_DOME,))  # pericardial fat


def _paint_kidney(cv, s):
    """Bean: ellipsoid minus a medial hilum notch; cortex, pyramids (medulla), renal pelvis."""
    sz, sy, sx = s.semi
    notch_c, pelvis_c = (0, -0.25 * sy, s.side * 0.8 * sx), (0, -0.1 * sy, s.side * 0.55 * sx)

    def fn(q, axes):
        lq = _local(q, s.pts[0], s.R)
        k = np.maximum(_ellipsoid(lq, (0, 0, 0), (sz, sy, sx)),
                       -_ellipsoid(lq, notch_c, (0.42 * sz, 0.5 * sy, 0.5 * sx)))
        lobes = np.cos(7 * np.arctan2(lq[1], lq[2] * s.side)) + np.cos(2 * np.pi * lq[0] / 32.0)
        pelvis = _ellipsoid(lq, pelvis_c, (0.38 * sz, 0.3 * sy, 0.28 * sx))
        return [k, k + s.cortex + 1.5 * lobes, pelvis]
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, fn)
    if res:
        sl, (k, med, pelvis) = res
        cv.paint(sl, k < 0, np.where(med < 0, KIDNEY_MEDULLA, KIDNEY_CORTEX).astype(np.uint8), _CAVITY)
        cv.paint(sl, pelvis < 0, URINE, _CAVITY)


def _paint_spleen(cv, s):
    """Crescent: an ellipsoid with a concave hilar (inner) face."""
    sz, sy, sx = s.semi

    def fn(q, axes):
        lq = _local(q, s.pts[0], s.R)
        outer = _ellipsoid(lq, (0, 0, 0), (sz, sy, sx))
        return [np.maximum(outer, -_ellipsoid(lq, (0, 1.5 * sy, 0), (0.85 * sz, 1.1 * sy, 0.8 * sx)))]
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, fn)
    if res:
        cv.paint(res[0], res[1][0] < 0, SPLEEN, _CAVITY)


def _paint_gallbladder(cv, s):
    sz, sy, sx = s.semi
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, lambda q, axes: [
        _ellipsoid(_local(q, s.pts[0], s.R), (0, 0, 0), ((sz, 0.8 * sz), sy, sx))])
    if res:
        sl, (e,) = res
        cv.paint(sl, e < 0, np.where(e > -2.0, BOWEL_WALL, BILE).astype(np.uint8), _CAVITY)


def _paint_liver(cv, s):
    """Large right lobe, medial segment and a left lobe tapering to the left; vessels inside."""
    def fn(q, axes):
        lq = _local(q, s.pts[0], s.R, s.scale)
        shear = [lq[0], lq[1], lq[2] - 0.4 * np.minimum(lq[0] + 5, 0)]  # tip of the right lobe: lateral
        right = _ellipsoid(shear, (-5, 20, -25), ((85, 75), (78, 60), (60, 50)))
        medial = _ellipsoid(lq, (15, 0, 20), (50, 55, 42))
        taper = np.clip(1.0 - 0.55 * np.maximum(lq[2] - 75.0, 0) / (65.0 * s.left_lobe), 0.25, 1.0)
        left = _ellipsoid([lq[0] / taper, lq[1] / taper, lq[2]], (20 / taper, -35 / taper, 75),
                          (32, 28, 65 * s.left_lobe))
        d = _smin(_smin(right, medial, 15.0), left, 15.0) * float(np.mean(s.scale))
        v = np.full(d.shape, 1e4, np.float32)
        for radii, pts in s.vessels:
            v = np.minimum(v, _chain_sdf(lq, pts, radii))
        return [d, v]
    res = _fields(cv, s.lo, s.hi, s.work_mm, s.warp, fn)
    if res:
        sl, (d, v) = res
        cv.paint(sl, d < 0, LIVER, _CAVITY)
        cv.paint(sl, v < 0, LIVER_VESSEL, (LIVER,))


_PAINTERS = {"tube": _paint_tube, "viscus": _paint_viscus, "bowel": _paint_bowel, "heart": _paint_heart,
             "kidney": _paint_kidney, "spleen": _paint_spleen, "gallbladder": _paint_gallbladder,
             "liver": _paint_liver}


# ----------------------------------------------------------------------------- intensities and imaging
_LABEL_LUT = np.zeros(256, np.uint8)
_LABEL_LUT[list(_TISSUE_LABEL)] = list(_TISSUE_LABEL.values())


def _draw_phase(rng, cfg):
    names = [p for p, _ in cfg.phase_weights]
    unknown = set(names) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown contrast phase(s) {sorted(unknown)}; known: {PHASES}")
    w = np.asarray([max(float(w), 0.0) for _, w in cfg.phase_weights])
    if w.sum() <= 0:
        raise ValueError("PhantomConfig.phase_weights must have a positive weight")
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _draw_hu(rng, cfg, phase):
    """HU lookup table (256 tissue codes) for one phantom in the given contrast phase."""
    lut = np.zeros(256, np.float32)
    for code, lo_hi in sorted(STATIC_HU.items()):
        lut[code] = _u(rng, lo_hi)
    for code, lo_hi in zip(_PHASE_TISSUES, PHASE_HU[phase], strict=True):
        lut[code] = _u(rng, lo_hi)
    lut[ABOVE_DOME] = lut[LUNG]
    if rng.random() < cfg.oral_contrast_probability:
        lut[BOWEL_FLUID] = _u(rng, (150.0, 400.0))
    return lut


def _draw_imaging(rng, cfg, bias=False):
    return SimpleNamespace(
        noise_hu=_u(rng, cfg.noise_sigma_hu), kernel_w=_u(rng, cfg.kernel_smoothing),
        thickness_mm=_u(rng, cfg.slice_thickness_mm),
        bias_hu=_u(rng, cfg.bias_field_hu) if bias else 0.0, bias_coef=rng.standard_normal((3, 6)))


def _tap3(a, w, axis):
    """In place [w, 1-2w, w] smoothing along ``axis`` (edges replicated)."""
    v = np.moveaxis(a, axis, 0)
    if w <= 1e-4 or v.shape[0] < 2:
        return
    e0, e1 = (1 - w) * v[0] + w * v[1], (1 - w) * v[-1] + w * v[-2]
    s = v[:-2] + v[2:]
    s *= w
    v[1:-1] *= 1 - 2 * w
    v[1:-1] += s
    v[0], v[-1] = e0, e1


def _blur(a, sigma_vox, axis):
    """Approximately Gaussian blur by repeated 3-tap passes (each adds variance 2w <= 0.5)."""
    if sigma_vox < 0.15:
        return
    n = int(np.ceil(sigma_vox ** 2 / 0.5))
    for _ in range(n):
        _tap3(a, sigma_vox ** 2 / (2 * n), axis)


def _render(rng, cv, lut, im, chunk=8):
    """HU volume: tissue intensities, slice-thickness blur, noise, then the in-plane reconstruction
    kernel (blurs anatomy and correlates noise alike, as a real kernel does), and a bias field."""
    ct = np.empty(cv.shape, np.float32)
    for z0 in range(0, cv.shape[0], chunk):
        ct[z0:z0 + chunk] = lut[cv.tissue[z0:z0 + chunk]]
    sigma_z = im.thickness_mm / 2.355 / cv.spacing[0]
    for y0 in range(0, cv.shape[1], 32):
        _blur(ct[:, y0:y0 + 32], sigma_z, 0)
    w = im.kernel_w * float(np.clip(1.5 / np.min(cv.spacing[1:]), 0.3, 1.0))  # milder on coarse grids
    noise_scale = im.noise_hu / ((1 - 2 * w) ** 2 + 2 * w * w)  # the kernel's noise variance factor
    bias = None
    if im.bias_hu > 0:
        bz, by, bx = (_profile(im.bias_coef[i:i + 1], ax, -300.0, 300.0)[0].astype(np.float32)
                      for i, ax in enumerate(cv.axes))
        bias = (by[:, None] + bx[None, :]) * (im.bias_hu / np.sqrt(3.0)), bz * (im.bias_hu / np.sqrt(3.0))
    out = np.empty(cv.shape, np.int16)
    for z0 in range(0, cv.shape[0], chunk):
        c = ct[z0:z0 + chunk]
        n = rng.standard_normal(c.shape, dtype=np.float32)
        n *= noise_scale
        c += n
        _tap3(c, w, 1)
        _tap3(c, w, 2)
        if bias is not None:
            c += bias[0][None]
            c += bias[1][z0:z0 + chunk, None, None]
        np.clip(np.rint(c, out=c), -1024, 3071, out=c)
        out[z0:z0 + chunk] = c
    return out


# ----------------------------------------------------------------------------- public API
def _draw_anatomy(rng, cfg, fit=None):
    """Draw a whole body; ``fit(body)`` may enlarge it (label-map mode) before organs are placed."""
    b = _draw_body(rng, cfg)
    if fit is not None:
        fit(b)
    return SimpleNamespace(body=b, spine=_draw_spine(rng, b), structs=_draw_vessels(rng, b)
                           + _draw_solid_organs(rng, cfg, b) + _draw_hollow_organs(rng, cfg, b))


def _paint_anatomy(cv, anat, structs=None, stamp=None):
    """Paint body, spine and structures in priority order; ``stamp`` (codes, 0 = none) wins last."""
    _paint_body(cv, anat.body)
    _paint_spine(cv, anat.spine)
    for s in anat.structs if structs is None else structs:
        _PAINTERS[s.kind](cv, s)
    if stamp is not None:
        for z0 in range(0, cv.shape[0], 16):
            t, st = cv.tissue[z0:z0 + 16], stamp[z0:z0 + 16]
            np.copyto(t, st, where=st > 0)
    for z0 in range(0, cv.shape[0], 16):
        t = cv.tissue[z0:z0 + 16]
        t[t == ABOVE_DOME] = LUNG


def make_phantom(rng: np.random.Generator, shape_zyx=(200, 512, 512), spacing_mm=(2.5, 0.8, 0.8),
                 config: PhantomConfig | None = None,
                 field_of_view_shift_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Return (ct_hu int16 (z,y,x), labels uint8 (z,y,x)) in canonical LPS orientation.

    The body is defined in millimetres and centred in the field of view; ``field_of_view_shift_mm``
    (z, y, x) moves the view over it (e.g. ``(150, 0, 0)`` looks at the lower chest). Structures
    outside the view are cut off. The same ``rng`` state gives the same body at any shape/spacing.
    """
    cfg = config or PhantomConfig()
    t0 = time.perf_counter()
    anat = _draw_anatomy(rng, cfg)
    phase = _draw_phase(rng, cfg)
    lut, imaging = _draw_hu(rng, cfg, phase), _draw_imaging(rng, cfg)
    cv = _Canvas(shape_zyx, spacing_mm, field_of_view_shift_mm)
    _paint_anatomy(cv, anat)
    t1 = time.perf_counter()
    ct = _render(rng, cv, lut, imaging)
    log.debug("phantom %s at %s mm, %s phase: anatomy %.2fs, render %.2fs", cv.shape, tuple(spacing_mm),
              phase, t1 - t0, time.perf_counter() - t1)
    return ct, _LABEL_LUT[cv.tissue]


def organ_mean_hu(ct_hu: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean HU inside each FLARE organ present (keys: 'liver', 'kidney', 'spleen', 'pancreas')."""
    if ct_hu.shape != labels.shape:
        raise ValueError(f"ct shape {ct_hu.shape} != labels shape {labels.shape}")
    sums = np.bincount(labels.ravel(), weights=ct_hu.ravel(), minlength=flare_labels.NUM_LABELS)
    counts = np.bincount(labels.ravel(), minlength=flare_labels.NUM_LABELS)
    return {flare_labels.NAMES[k]: float(sums[k] / counts[k]) for k in flare_labels.ORGANS if counts[k] > 0}


# ----------------------------------------------------------------------------- label-map mode
_SOURCES = {"amos": dict(liver=(6,), spleen=(1,), kidney=(2, 3), aorta=(8,), max_value=15),
            "flare": dict(liver=(1,), spleen=(3,), kidney=(2,), aorta=(), max_value=4)}


def _centroid_mm(label_map, values, axes):
    m = np.isin(label_map, values) if values else np.zeros(1, bool)
    if not m.any():
        return None
    idx = np.nonzero(m)
    return np.array([float(axes[i][idx[i]].mean()) for i in range(3)])


def _fit_body(b, pts_yx, spine_yx, margin=0.92):
    """Enlarge the body cavity until the organs' axial projection (FOV mm, relative to the spine)
    lies well inside it."""
    for _ in range(8):
        if not len(pts_yx):
            break
        _derive_body(b)
        y, x = pts_yx[:, 0] - spine_yx[0] + b.vb, pts_yx[:, 1] - spine_yx[1]
        b_post_cav = b.vb + b.cavity_back
        s = (x / b.a_cav) ** 2 + np.where(y < 0, (y / (b.depth - b.vb)) ** 2,
                                          np.abs(y / b_post_cav) ** b.p_post)
        worst = float(s.max()) / margin
        if worst <= 1.0:
            break
        grow = np.sqrt(worst)
        b.a_cav, b.depth, b.cavity_back = b.a_cav * grow, b.depth * grow, b.cavity_back * grow
    _derive_body(b)


def _label_map_layout(label_map, spacing_mm, source):
    """Where the labelled organs are: (axial projection points (y, x), spine (y, x), top z of
    liver/spleen or None), in millimetres from the centre of the field of view."""
    info = _SOURCES[source]
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(label_map.shape, spacing_mm, strict=True)]
    proj = np.nonzero((label_map > 0).any(axis=0))
    pts = np.stack([axes[1][proj[0]], axes[2][proj[1]]], axis=1)[:: max(1, len(proj[0]) // 20000)]
    kidney = _centroid_mm(label_map, info["kidney"], axes)
    aorta = _centroid_mm(label_map, info["aorta"], axes)
    centre = pts.mean(axis=0) if len(pts) else np.zeros(2)
    spine_x = aorta[2] - 14.0 if aorta is not None else (kidney[2] if kidney is not None else centre[1])
    spine_y = kidney[1] - 5.0 if kidney is not None else (
        aorta[1] + 33.0 if aorta is not None else centre[0] + 30.0 * bool(len(pts)))
    top = np.nonzero(np.isin(label_map, info["liver"] + info["spleen"]).any(axis=(1, 2)))[0]
    return pts, np.array([spine_y, spine_x]), (float(axes[0][top.max()]) if top.size else None)


def phantom_from_label_map(rng: np.random.Generator, label_map: np.ndarray, spacing_mm, source: str = "amos",
                           config: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """SynthSeg-style domain randomization around a real label map: CT (int16 HU) whose tissues get random
    intensities per class, plus a synthesized body outline/fat/muscle/bone around it, noise, blur; returns
    (ct_hu, flare_labels uint8). `source="amos"` means AMOS22 15-class values (1 spleen, 2 right kidney,
    3 left kidney, 4 gallbladder, 5 oesophagus, 6 liver, 7 stomach, 8 aorta, 9 IVC, 10 pancreas,
    11/12 adrenals, 13 duodenum, 14 bladder, 15 prostate/uterus); `source="flare"` means a 0-4 FLARE map.
    The label map is already in canonical orientation (z, y, x) with the given spacing."""
    if source not in _SOURCES:
        raise ValueError(f"unknown label-map source {source!r}; known: {sorted(_SOURCES)}")
    label_map = np.asarray(label_map)
    if label_map.ndim != 3 or not np.issubdtype(label_map.dtype, np.integer):
        raise ValueError(f"label_map must be a 3-D integer array, got {label_map.dtype} {label_map.shape}")
    if label_map.size and (label_map.min() < 0 or label_map.max() > _SOURCES[source]["max_value"]):
        raise ValueError(f"label_map values {label_map.min()}..{label_map.max()} do not fit "
                         f"source {source!r}")
    cfg = config or PhantomConfig()
    t0 = time.perf_counter()
    pts, spine_yx, top_z = _label_map_layout(label_map, spacing_mm, source)
    anat = _draw_anatomy(rng, cfg, fit=lambda b: _fit_body(b, pts, spine_yx))
    b = anat.body
    shift_z = b.dome_top - 12.0 - top_z if top_z is not None else 0.0
    cv = _Canvas(label_map.shape, spacing_mm, (shift_z, b.vb - spine_yx[0], -spine_yx[1]))
    keep = ("heart", "bowel") if source == "amos" else ("heart", "bowel", "viscus")
    structs = [s for s in anat.structs if s.kind in keep or (source == "flare" and s.kind == "tube"
                                                              and s.code in (ARTERY, VEIN))]
    stamp = np.where(label_map > 0, label_map.astype(np.uint8) + np.uint8(_LM_BASE), np.uint8(0))
    _paint_anatomy(cv, anat, structs, stamp)
    lut = _draw_hu(rng, cfg, _draw_phase(rng, cfg))
    lut[:_LM_BASE] += rng.uniform(-15.0, 15.0, _LM_BASE).astype(np.float32) * (lut[:_LM_BASE] > -500)
    lut[_LM_BASE + 1:_LM_BASE + 16] = rng.uniform(*cfg.label_map_hu, 15)
    ct = _render(rng, cv, lut, _draw_imaging(rng, cfg, bias=True))
    flare = flare_labels.map_labels(label_map, "amos") if source == "amos" else label_map.astype(np.uint8)
    log.debug("label-map phantom %s (%s): %.2fs", label_map.shape, source, time.perf_counter() - t0)
    return ct, flare
