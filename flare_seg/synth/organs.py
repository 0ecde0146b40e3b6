"""Vessels, solid organs (liver, kidneys, spleen, pancreas, gallbladder), hollow organs and the heart:
their random draws (:class:`Structure`) and their painters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flare_seg.synth.canvas import CAVITY, THORAX, evaluate_fields
from flare_seg.synth.fields import chain_sdf, ellipsoid, rotation, smin, smooth_field, u
from flare_seg.synth.tissues import (
    ABOVE_DOME,
    ARTERY,
    BILE,
    BOWEL_FLUID,
    BOWEL_WALL,
    GAS,
    HEART_BLOOD,
    KIDNEY_CORTEX,
    KIDNEY_MEDULLA,
    LIVER,
    LIVER_VESSEL,
    MYOCARDIUM,
    PANCREAS,
    PORTAL,
    SPLEEN,
    STOOL,
    URINE,
    VEIN,
    VISC_FAT,
)


@dataclass
class Structure:
    """A structure to paint: its kind (a key of :data:`PAINTERS`), points, physical box ``lo``..``hi``
    (z, y, x mm) and the parameters its painter reads; the others stay None."""

    kind: str
    pts: np.ndarray
    radii: np.ndarray | float | None
    lo: np.ndarray
    hi: np.ndarray
    work_mm: float = 2.5  # work-grid spacing the shape is evaluated on
    warp: tuple | None = None  # (coefficients (3, n, n, n), amplitude mm) of the shape's displacement
    code: int | None = None  # tissue code of tubes and the lumen of viscera
    allowed: tuple | None = None  # tissue codes a tube may overwrite
    rotation: np.ndarray | None = None  # 3x3 pose
    semi: np.ndarray | None = None  # semi-axes (mm)
    scale: np.ndarray | None = None  # per-axis scale of the liver template
    side: float | None = None  # +1 right kidney, -1 left
    cortex: float | None = None  # kidney cortex thickness
    myo: float | None = None  # myocardium thickness
    vessels: list | None = None  # liver vessels (radii, points relative to the anchor)
    left_lobe: float | None = None  # relative length of the liver's left lobe
    wall: float | None = None  # wall thickness of viscera
    gas_y: float | None = None  # gas level (y mm) of stomach and duodenum
    gas_thr: float | None = None  # threshold of the gas field (colon, small bowel)
    lobes: tuple | None = None  # (coefficients, amplitude mm) of a lobulated surface
    thr: float | None = None  # small-bowel loop threshold
    coef: np.ndarray | None = None  # small-bowel loop field coefficients
    gas_coef: np.ndarray | None = None


def _spec(kind, pts, radii=None, margin=0.0, **kw):
    """A structure to paint: its kind, physical box (z, y, x mm) and parameters."""
    pts = np.atleast_2d(np.asarray(pts, np.float64))
    r = 0.0 if radii is None else float(np.max(radii))
    return Structure(kind=kind, pts=pts, radii=radii, lo=pts.min(0) - r - margin,
                     hi=pts.max(0) + r + margin, **kw)


def _placer(body):
    """Map (z, y relative to the spine, x) template points onto this body (scaled, anatomy mm)."""
    def place(rel):
        rel = np.atleast_2d(np.asarray(rel, np.float64))
        y = np.where(rel[:, 1] < 0, rel[:, 1] * body.depth_scale, rel[:, 1])
        return np.stack([rel[:, 0] * body.height_scale, body.spine_y + y, rel[:, 2] * body.width_scale], axis=1)
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
    return rotation(np.deg2rad(np.asarray(base_deg) + rng.normal(0, sd_deg, 3)))


def _warp(rng, cfg, n=4, scale=1.0):
    return rng.standard_normal((3, n, n, n)), cfg.deformation_mm * scale


def draw_vessels(rng, body):
    place = _placer(body)
    out = []
    for code, radii, pts in _VESSELS:
        p = place(pts) + rng.normal(0, 3.0, 3)
        out.append(_spec("tube", p, np.asarray(radii) * u(rng, (0.9, 1.1)), code=code, allowed=THORAX,
                         warp=None, work_mm=2.5))
    heart = place((body.dome_top / body.height_scale + 35, -55, 25))[0] + rng.normal(0, 5, 3)
    out.append(_spec("heart", heart, 80.0, rotation=_pose(rng, 8.0, (0, 15, 35)),
                     semi=rng.uniform((55, 48, 65), (65, 58, 80)), myo=u(rng, (8.0, 12.0)), work_mm=3.0))
    return out


def draw_solid_organs(rng, cfg, body):
    place, rot = _placer(body), cfg.organ_rotation_deg
    out = []
    for side, rel in ((1.0, (-50, 5, -52)), (-1.0, (-42, 6, 58))):  # right kidney, then left
        semi = np.array([55.0, 24.0, 30.0]) * u(rng, cfg.organ_scale) * rng.uniform(0.93, 1.07, 3)
        c = place(rel)[0] + rng.normal(0, cfg.organ_shift_mm, 3)
        out.append(_spec("kidney", c, semi.max() + 12, warp=_warp(rng, cfg, scale=0.6), semi=semi, side=side,
                         rotation=_pose(rng, rot, (side * 30, -side * 12, 15)), cortex=u(rng, (5.0, 8.0)),
                         work_mm=2.0))
    semi = np.array([52.0, 22.0, 48.0]) * u(rng, cfg.organ_scale) * rng.uniform(0.93, 1.07, 3)
    c = place((16, 12, 80))[0] + rng.normal(0, cfg.organ_shift_mm, 3)
    normal_deg = np.rad2deg(np.arctan2(-c[2], -(c[1] - body.spine_y + 40)))
    out.append(_spec("spleen", c, semi.max() + 15, warp=_warp(rng, cfg), semi=semi,
                     rotation=_pose(rng, rot, (normal_deg, 0, 0)), work_mm=2.5))
    if rng.random() < cfg.gallbladder_probability:
        c = place((-22, -40, -62))[0] + rng.normal(0, cfg.organ_shift_mm, 3)
        semi = np.array([34.0, 14.0, 15.0]) * u(rng, (0.7, 1.2))
        out.append(_spec("gallbladder", c, semi.max() + 10, warp=_warp(rng, cfg, scale=0.5), semi=semi,
                         rotation=_pose(rng, rot, (0, 0, 35)), work_mm=2.0))
    anchor = place(_LIVER_ANCHOR)[0] + rng.normal(0, cfg.organ_shift_mm, 3)
    scale = u(rng, cfg.organ_scale) * rng.uniform(0.94, 1.06, 3)
    vessels = [(np.asarray(r, float), np.subtract(p, _LIVER_ANCHOR)) for r, p in _LIVER_VESSELS]
    liver = _spec("liver", anchor, 0.0, warp=_warp(rng, cfg, n=5), rotation=_pose(rng, rot), scale=scale,
                  vessels=vessels, left_lobe=u(rng, (0.8, 1.2)), work_mm=3.0)
    liver.lo = anchor + np.array([-115.0, -115.0, -120.0]) * scale
    liver.hi = anchor + np.array([110.0, 115.0, 165.0]) * scale
    out.append(liver)
    radii, pts = _PANCREAS
    p = place(pts) + rng.normal(0, 4.0, (len(pts), 3)) + rng.normal(0, cfg.organ_shift_mm * 0.7, 3)
    pancreas = _spec("tube", p, np.asarray(radii) * u(rng, cfg.organ_scale), margin=10.0, code=PANCREAS,
                     allowed=CAVITY, warp=_warp(rng, cfg, scale=0.6), work_mm=2.0)
    out.append(_lobulated(rng, pancreas))
    return out


def _lobulated(rng, spec, knot_mm=9.0, amp_mm=2.0):
    """Attach a fine random surface field (lobulated outline) to a spec."""
    n = np.maximum(np.ceil((spec.hi - spec.lo) / knot_mm).astype(int) + 1, 2)
    spec.lobes = (rng.standard_normal(tuple(n)), amp_mm)
    return spec


def draw_hollow_organs(rng, cfg, body):
    place = _placer(body)
    gas = rng.random(4) < cfg.gas_probability
    out = []
    for (radii, pts), wall, gas_mm in ((_STOMACH, 5.0, 45.0), (_DUODENUM, 3.0, 12.0)):
        p = place(pts) + rng.normal(0, 5.0, (len(pts), 3))
        r = np.asarray(radii) * u(rng, (0.8, 1.15))
        level = float(np.min(p[:, 1] - r)) + (u(rng, (3.0, gas_mm)) if gas[len(out)] else -1e3)
        out.append(_spec("viscus", p, r, code=BOWEL_FLUID, wall=wall, gas_y=level, warp=_warp(rng, cfg),
                         margin=10.0, work_mm=2.5))
    radii, pts = _COLON
    p, r = place(pts) + rng.normal(0, 6.0, (len(pts), 3)), np.asarray(radii) * u(rng, (0.8, 1.15))
    gas_thr = u(rng, (-0.3, 0.6)) if gas[2] else 9.0
    for part in (slice(0, 4), slice(3, 7), slice(6, None)):  # ascending, transverse, descending+sigmoid
        colon = _spec("viscus", *_haustra(p[part], r[part]), code=STOOL, wall=3.0, gas_y=None,
                      warp=_warp(rng, cfg), margin=10.0, work_mm=3.0, gas_thr=gas_thr)
        out.append(_lobulated(rng, colon, knot_mm=12.0))
    sb = _spec("bowel", place([(-280, -130, -125), (-20, 40, 125)]), None, warp=None, work_mm=3.0,
               thr=u(rng, (-0.4, 0.1)), gas_thr=u(rng, (1.4, 2.2)) if gas[3] else 9.0)
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


def local(q, centre, R, scale=1.0):
    """Coordinates of ``q`` in a structure's own frame: rotated by R^T about ``centre``, scaled."""
    d = [qi - ci for qi, ci in zip(q, centre, strict=True)]
    scale = np.broadcast_to(np.asarray(scale, np.float64), (3,))
    return [sum(R[j, i] * d[j] for j in range(3)) / scale[i] for i in range(3)]


def _paint_tube(cv, spec):
    amp = spec.warp[1] if spec.warp else 0.0

    def fn(q, axes):
        d = chain_sdf(q, spec.pts, spec.radii, axes, margin_mm=3 * amp)
        if spec.lobes is not None:
            d += spec.lobes[1] * smooth_field(spec.lobes[0], spec.lo, spec.hi, axes)
        return [d]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, fn)
    if res:
        cv.paint(res[0], res[1][0] < 0, spec.code, spec.allowed)


def _paint_viscus(cv, spec):
    """Hollow organ: wall, then gas above a level (supine: anterior) or in random pockets, fluid."""
    amp = spec.warp[1]

    def fn(q, axes):
        d = chain_sdf(q, spec.pts, spec.radii, axes, margin_mm=3 * amp)
        if spec.gas_y is not None:
            return [d]
        g = smooth_field(spec.lobes[0], spec.lo, spec.hi, axes)
        return [d + spec.lobes[1] * g, g]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, fn)
    if not res:
        return
    sl, f = res
    if spec.gas_y is not None:
        gas = (cv.axes[1][sl[1]] < spec.gas_y)[None, :, None]
    else:
        gas = f[1] > spec.gas_thr

    def codes(m):
        gas_m = np.broadcast_to(gas, m.shape)[m]
        return np.where(f[0][m] > -spec.wall, BOWEL_WALL, np.where(gas_m, GAS, spec.code)).astype(np.uint8)
    cv.paint(sl, f[0] < 0, codes, CAVITY)


def _paint_bowel(cv, spec):
    """Small-bowel loops: blobs of a smooth random field, fewer towards the upper abdomen."""
    def fn(q, axes):
        return [smooth_field(spec.coef, spec.lo, spec.hi, axes), smooth_field(spec.gas_coef, spec.lo, spec.hi, axes)]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, None, fn)
    if not res:
        return
    sl, (g, g2) = res
    z = cv.axes[0][sl[0]][:, None, None]
    y = cv.axes[1][sl[1]][None, :, None]
    # fewer loops towards the top and the back of the box
    g -= spec.thr + 1.2 * (np.clip((z - spec.hi[0] + 60.0) / 50.0, 0, 1)
                        + np.clip((y - spec.hi[1] + 50.0) / 40.0, 0, 1))
    cv.paint(sl, g > 0, lambda m: np.where(g[m] < 0.25, BOWEL_WALL, np.where(
        g2[m] > spec.gas_thr, GAS, BOWEL_FLUID)).astype(np.uint8), CAVITY)


def _paint_heart(cv, spec):
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, None,
                  lambda q, axes: [ellipsoid(local(q, spec.pts[0], spec.rotation), (0, 0, 0), tuple(spec.semi))])
    if res:
        sl, (e,) = res
        cv.paint(sl, e < 0, np.where(e > -spec.myo, MYOCARDIUM, HEART_BLOOD).astype(np.uint8), (ABOVE_DOME,))
        cv.paint(sl, e < 5, VISC_FAT, (ABOVE_DOME,))  # pericardial fat


def _paint_kidney(cv, spec):
    """Bean: ellipsoid minus a medial hilum notch; cortex, pyramids (medulla), renal pelvis."""
    sz, sy, sx = spec.semi
    notch_c, pelvis_c = (0, -0.25 * sy, spec.side * 0.8 * sx), (0, -0.1 * sy, spec.side * 0.55 * sx)

    def fn(q, axes):
        lq = local(q, spec.pts[0], spec.rotation)
        k = np.maximum(ellipsoid(lq, (0, 0, 0), (sz, sy, sx)),
                       -ellipsoid(lq, notch_c, (0.42 * sz, 0.5 * sy, 0.5 * sx)))
        lobes = np.cos(7 * np.arctan2(lq[1], lq[2] * spec.side)) + np.cos(2 * np.pi * lq[0] / 32.0)
        pelvis = ellipsoid(lq, pelvis_c, (0.38 * sz, 0.3 * sy, 0.28 * sx))
        return [k, k + spec.cortex + 1.5 * lobes, pelvis]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, fn)
    if res:
        sl, (k, med, pelvis) = res
        cv.paint(sl, k < 0, np.where(med < 0, KIDNEY_MEDULLA, KIDNEY_CORTEX).astype(np.uint8), CAVITY)
        cv.paint(sl, pelvis < 0, URINE, CAVITY)


def _paint_spleen(cv, spec):
    """Crescent: an ellipsoid with a concave hilar (inner) face."""
    sz, sy, sx = spec.semi

    def fn(q, axes):
        lq = local(q, spec.pts[0], spec.rotation)
        outer = ellipsoid(lq, (0, 0, 0), (sz, sy, sx))
        return [np.maximum(outer, -ellipsoid(lq, (0, 1.5 * sy, 0), (0.85 * sz, 1.1 * sy, 0.8 * sx)))]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, fn)
    if res:
        cv.paint(res[0], res[1][0] < 0, SPLEEN, CAVITY)


def _paint_gallbladder(cv, spec):
    sz, sy, sx = spec.semi
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, lambda q, axes: [
        ellipsoid(local(q, spec.pts[0], spec.rotation), (0, 0, 0), ((sz, 0.8 * sz), sy, sx))])
    if res:
        sl, (e,) = res
        cv.paint(sl, e < 0, np.where(e > -2.0, BOWEL_WALL, BILE).astype(np.uint8), CAVITY)


def _paint_liver(cv, spec):
    """Large right lobe, medial segment and a left lobe tapering to the left; vessels inside."""
    def fn(q, axes):
        lq = local(q, spec.pts[0], spec.rotation, spec.scale)
        shear = [lq[0], lq[1], lq[2] - 0.4 * np.minimum(lq[0] + 5, 0)]  # tip of the right lobe: lateral
        right = ellipsoid(shear, (-5, 20, -25), ((85, 75), (78, 60), (60, 50)))
        medial = ellipsoid(lq, (15, 0, 20), (50, 55, 42))
        taper = np.clip(1.0 - 0.55 * np.maximum(lq[2] - 75.0, 0) / (65.0 * spec.left_lobe), 0.25, 1.0)
        left = ellipsoid([lq[0] / taper, lq[1] / taper, lq[2]], (20 / taper, -35 / taper, 75),
                          (32, 28, 65 * spec.left_lobe))
        d = smin(smin(right, medial, 15.0), left, 15.0) * float(np.mean(spec.scale))
        v = np.full(d.shape, 1e4, np.float32)
        for radii, pts in spec.vessels:
            v = np.minimum(v, chain_sdf(lq, pts, radii))
        return [d, v]
    res = evaluate_fields(cv, spec.lo, spec.hi, spec.work_mm, spec.warp, fn)
    if res:
        sl, (d, v) = res
        cv.paint(sl, d < 0, LIVER, CAVITY)
        cv.paint(sl, v < 0, LIVER_VESSEL, (LIVER,))


PAINTERS = {"tube": _paint_tube, "viscus": _paint_viscus, "bowel": _paint_bowel, "heart": _paint_heart,
             "kidney": _paint_kidney, "spleen": _paint_spleen, "gallbladder": _paint_gallbladder,
             "liver": _paint_liver}

