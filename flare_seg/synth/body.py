"""Body wall (skin, fat, muscle, diaphragm), ribs and table; spine and back muscles."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flare_seg.synth.canvas import THORAX, lut
from flare_seg.synth.fields import profile, u
from flare_seg.synth.tissues import (
    ABOVE_DOME,
    CANCELLOUS,
    CARTILAGE,
    CORTICAL,
    CSF,
    DISC,
    MUSCLE,
    SKIN,
    SUBCUT_FAT,
    TABLE,
    VISC_FAT,
)


@dataclass
class Body:
    """One drawn body (mm, anatomy frame). The first block is drawn, the second derived by :func:`derive_body`
    from it (and re-derived when label-map mode enlarges the cavity)."""

    a_cav: float  # cavity half width, inside the lateral muscle wall
    depth: float  # cavity depth, vertebral body centre to anterior wall
    p_post: float  # exponent of the flatter posterior half of the outline
    fat: float  # subcutaneous fat thickness
    muscle: float  # muscle wall thickness
    fat_ratios: np.ndarray  # lateral, anterior, posterior fat factors
    prof: np.ndarray  # coefficients of the per-slice outline profiles (11, 14)
    irr_amp: float  # amplitude of the outline harmonics
    height_scale: float
    table: bool
    table_gap: float
    table_curve: float
    rib_pitch: float
    rib_drop: float
    rib_half_h: float
    rib_z0: float
    dome_top: float  # height of the right diaphragm dome
    dome_left_drop: float
    dome_k: np.ndarray  # curvature of the domes (x, y)
    spine_back: float  # vertebral body centre to the back of the erector muscles
    cavity_back: float
    spine_y: float = 0.0  # y of the vertebral body centre
    half_width: float = 0.0  # outer lateral half axis
    b_ant: float = 0.0  # outer anterior half axis
    b_post: float = 0.0  # outer posterior half axis
    width_scale: float = 1.0  # cavity size relative to the organ templates
    depth_scale: float = 1.0


@dataclass(frozen=True)
class Spine:
    """Vertebral column and back muscles (mm)."""

    spine_y: float
    rx: float  # vertebral body half axes
    ry: float
    pitch: float  # vertebra height
    disc: float  # disc height
    phase: float  # z offset of the first disc
    canal: float  # spinal canal radius
    psoas_top: float
    psoas_max: float  # largest psoas radius
    back: float


def draw_body(rng, cfg):
    """Body outline, layers, diaphragm, ribs and table."""
    body = Body(
        a_cav=u(rng, cfg.cavity_half_width_mm), depth=u(rng, cfg.cavity_depth_mm),
        p_post=u(rng, (2.3, 3.2)), fat=u(rng, cfg.subcutaneous_fat_mm), muscle=u(rng, cfg.muscle_wall_mm),
        fat_ratios=rng.uniform((0.5, 1.0, 0.4), (0.9, 1.6, 0.8)),  # lateral, anterior, posterior
        prof=rng.standard_normal((11, 14)), irr_amp=u(rng, (0.6, 1.4)), height_scale=u(rng, cfg.height_scale),
        table=bool(rng.random() < cfg.table_probability), table_gap=u(rng, (3.0, 20.0)),
        table_curve=u(rng, (0.0004, 0.0012)), rib_pitch=u(rng, (25.0, 31.0)),
        rib_drop=u(rng, (190.0, 240.0)), rib_half_h=u(rng, (5.0, 7.0)), rib_z0=float(rng.normal(15, 8)),
        dome_top=float(rng.normal(95, 7)), dome_left_drop=u(rng, (8.0, 25.0)),
        dome_k=rng.uniform((0.006, 0.004), (0.010, 0.007)), spine_back=u(rng, (70.0, 80.0)),
        cavity_back=u(rng, (50.0, 64.0)))
    body.rib_z0 *= body.height_scale
    body.dome_top *= body.height_scale
    return derive_body(body)


def derive_body(body):
    """Outer axes and spine position from the cavity size and layers; the body is centred in y."""
    fat_lat, fat_ant, fat_post = body.fat * body.fat_ratios
    body.spine_y = (body.depth + fat_ant - body.spine_back - fat_post) / 2.0
    body.half_width = body.a_cav + body.muscle + fat_lat
    body.b_ant = body.depth - body.spine_y + body.muscle + fat_ant
    body.b_post = body.spine_y + body.spine_back + body.muscle + fat_post
    body.width_scale, body.depth_scale = body.a_cav / 128.0, body.depth / 110.0
    return body


def _body_profiles(body, z):
    """Per-slice body axes, layer thicknesses and outline harmonics at anatomy heights ``z``."""
    f = profile(body.prof, z).astype(np.float32)
    hips = np.clip((-150.0 - z) / 100.0, 0, 1)
    chest = np.clip((z - 150.0) / 150.0, 0, 1)
    a = body.half_width * (1 + 0.04 * f[0]) * (1 + 0.08 * hips) * (1 - 0.06 * chest)
    fat = np.maximum(body.fat * (1 + 0.25 * f[3]) * (1 + 0.3 * hips), 2.0)
    return dict(a=a, b_ant=body.b_ant * (1 + 0.05 * f[1]) * (1 - 0.1 * chest),
                b_post=body.b_post * (1 + 0.02 * f[2]), fat=fat, muscle=body.muscle * (1 + 0.1 * f[4]),
                irr=body.irr_amp * f[5:11] * np.array([0.02, 0.02, 0.012, 0.012, 0.007, 0.007])[:, None])


def _superellipse(y, x, a, b_ant, b_post, p):
    """Outer sum ``(x/a)^2 + |y/body|^p`` with a flatter (exponent p) posterior half."""
    yt = np.where(y < 0, (y / b_ant) ** 2, np.abs(y / b_post) ** p)
    return yt[:, None] + ((x / a) ** 2)[None, :]


def _dome(body, yy, xx):
    """Height (anatomy z, mm) of the diaphragm over the axial plane: right dome higher than left."""
    dy = yy - (body.spine_y - 40.0)
    ky = np.where(dy < 0, 0.5, 1.0) * body.dome_k[1] * dy ** 2 + 0.003 * np.maximum(yy - body.spine_y, 0) ** 2
    right = body.dome_top - body.dome_k[0] * (xx + 60 * body.width_scale) ** 2 - ky
    left = body.dome_top - body.dome_left_drop - body.dome_k[0] * (xx - 55 * body.width_scale) ** 2 - ky
    tendon = body.dome_top - body.dome_left_drop - 12.0 - 0.002 * xx ** 2 - ky  # central tendon under the heart
    return np.maximum(np.maximum(right, left), np.maximum(tendon, body.dome_top - 110.0)).astype(np.float32)


def paint_body(cv, body):
    zs, ys, xs = cv.axes
    prof = _body_profiles(body, zs)
    r = (np.searchsorted(ys, -1.3 * max(body.b_ant, body.b_post)), np.searchsorted(ys, 1.3 * body.b_post, "right"))
    c = (np.searchsorted(xs, -1.35 * body.half_width), np.searchsorted(xs, 1.35 * body.half_width, "right"))
    y, x = ys[r[0]:r[1]], xs[c[0]:c[1]]
    yy, xx = y[:, None], x[None, :]
    phi_bin = np.rint((np.arctan2(yy, xx) + np.pi) / (2 * np.pi) * 255).astype(np.intp)
    ang = np.linspace(-np.pi, np.pi, 256)
    harm = np.stack([f(k * ang) for k in (2, 3, 4) for f in (np.cos, np.sin)])
    psi = (np.arctan2(np.abs(xx), yy) / np.pi).astype(np.float32)  # 0 posterior .. 1 anterior midline
    rr = np.maximum(np.hypot(yy, xx), 1e-3)
    dirs = (yy / rr, xx / rr)
    dome = _dome(body, yy, xx)
    if body.table:
        yt = body.b_post + body.table_gap - body.table_curve * xs[None, :] ** 2
        dy = ys[:, None] - yt
        cv.tissue[:, (((dy > 0) & (dy < 5)) | ((dy > 35) & (dy < 38))) & (np.abs(xs) < 230)[None, :]] = TABLE
    for iz, z in enumerate(zs):
        a, ba, bp, fat, mus = (prof[k][iz] for k in ("a", "b_ant", "b_post", "fat", "muscle"))
        t2 = ((1.0 + prof["irr"][:, iz] @ harm) ** 2).astype(np.float32)[phi_bin]
        s_out = _superellipse(y, x, a, ba, bp, body.p_post)
        fl, fa, fp = fat * body.fat_ratios
        s_fat = _superellipse(y, x, a - fl, ba - fa, bp - fp, body.p_post)
        cav_axes = (a - fl - mus, ba - fa - mus, body.spine_y + body.cavity_back)
        s_cav = _superellipse(y, x, *cav_axes, body.p_post)
        sl = cv.tissue[iz, r[0]:r[1], c[0]:c[1]]
        inside = s_out < t2
        sl[inside] = SUBCUT_FAT
        sl[inside & (s_out > t2 * (1 - 2.5 / min(a, ba, bp)) ** 2)] = SKIN
        in_fat, cav = s_fat < t2, s_cav < t2
        sl[in_fat] = MUSCLE
        sl[cav] = VISC_FAT
        above = cav & (dome < z)
        sl[cav & (dome < z + 5.0) & ~above] = MUSCLE  # the diaphragm
        sl[above] = ABOVE_DOME
        if z > body.rib_z0 - body.rib_drop - 20:
            near = (s_cav < t2 * (1 + 12.0 / min(cav_axes)) ** 2) & ~cav  # within ~12 mm of the cavity
            _paint_ribs(sl, body, z, near & in_fat, s_cav, t2, psi, dirs, cav_axes)


def _paint_ribs(sl, body, z, band, s_cav, t2, psi, dirs, cav_axes):
    """Ribs as oval bones just outside the cavity, descending anteriorly; costal cartilage; sternum."""
    idx = np.nonzero(band)
    dy, dx = dirs[0][idx], dirs[1][idx]
    radius = 1.0 / np.sqrt((dx / cav_axes[0]) ** 2 + (dy / np.where(dy < 0, cav_axes[1], cav_axes[2])) ** 2)
    out_mm = (np.sqrt(s_cav[idx] / t2[idx]) - 1.0) * radius  # distance outside the cavity
    frac = (out_mm - 1.0) / 9.0  # a 9 mm thick rib, 1 mm outside the cavity
    ps = psi[idx]
    u = (z - body.rib_z0 + body.rib_drop * ps) / body.rib_pitch
    k = np.rint(u)
    e = ((frac - 0.5) / 0.5) ** 2 + ((u - k) * body.rib_pitch / body.rib_half_h) ** 2
    rib = (e < 1) & (k >= 0) & (ps >= 0.16) & (ps <= np.minimum(0.42 + 0.08 * k, 0.93))
    sternum = (ps > 0.93) & (z > body.dome_top - 25) & (np.abs(frac - 0.5) < 0.42)
    code = np.where(ps > 0.72, CARTILAGE, np.where(e > 0.4, CORTICAL, CANCELLOUS))
    code = np.where(sternum, np.where(np.abs(frac - 0.5) > 0.3, CORTICAL, CANCELLOUS), code)
    ok = rib | sternum
    sl[idx[0][ok], idx[1][ok]] = code[ok]


# ----------------------------------------------------------------------------- spine and back muscles
def draw_spine(rng, body):
    return Spine(
        spine_y=body.spine_y, rx=u(rng, (20.0, 25.0)), ry=u(rng, (15.0, 19.0)),
        pitch=u(rng, (28.0, 34.0)) * body.height_scale,
        disc=u(rng, (6.0, 10.0)), phase=u(rng, (0.0, 40.0)), canal=u(rng, (8.0, 11.0)),
        psoas_top=-30.0 * body.height_scale, psoas_max=u(rng, (18.0, 27.0)), back=body.spine_back)


def _disc2d(yy, xx, p0, p1, r):
    """2-D capsule mask between points (y, x) p0 and p1 with radius r."""
    d = np.subtract(p1, p0)
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d), 0, 1)
    return (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2 < r * r


def paint_spine(cv, spine):
    """Vertebral bodies (cortex, cancellous core, discs), neural arch, processes, psoas, erectors."""
    zs = cv.axes[0]
    y0 = spine.spine_y
    sl = cv.box((zs[0], y0 - spine.ry - 5, -110.0), (zs[-1], y0 + spine.ry + spine.back + 40, 110.0))
    if sl is None:
        return
    yy, xx = cv.axes[1][sl[1]][:, None], cv.axes[2][sl[2]][None, :]
    dy = yy - spine.spine_y
    vertebral_body = (xx / spine.rx) ** 2 + (dy / spine.ry) ** 2 < 1
    core = (xx / (spine.rx - 1.8)) ** 2 + (dy / (spine.ry - 1.8)) ** 2 < 1
    yc = spine.spine_y + spine.ry + spine.canal + 2
    rc2 = xx ** 2 + (yy - yc) ** 2
    canal, arch = rc2 < spine.canal ** 2, (rc2 < (spine.canal + 6) ** 2) & (yy > spine.spine_y)
    spinous = _disc2d(yy, xx, (yc + spine.canal + 3, 0), (yc + spine.canal + spine.back - 40, 0), 3.5)
    transverse = _disc2d(yy, xx, (yc - 4, -10), (yc + 2, -spine.rx - 22), 3.5) | _disc2d(
        yy, xx, (yc - 4, 10), (yc + 2, spine.rx + 22), 3.5)
    erector = ((np.abs(xx) - spine.rx - 12) / 32) ** 2 + ((yy - yc - 22) / 34) ** 2 < 1  # erector spinae
    quadratus = ((np.abs(xx) - spine.rx - 38) / 20) ** 2 + ((dy - 42) / 14) ** 2 < 1  # quadratus lumborum
    bone_ok, soft_ok = lut((VISC_FAT, ABOVE_DOME, MUSCLE, SUBCUT_FAT)), lut(THORAX)
    for iz, z in enumerate(zs):
        ph = (z - spine.phase) % spine.pitch
        region = cv.tissue[iz][sl[1:]]
        inner = CANCELLOUS if spine.disc + 1.6 < ph < spine.pitch - 1.6 else CORTICAL  # endplates
        code = np.where(canal, CSF, np.where(ph < spine.disc, DISC, np.where(core, inner, CORTICAL)))
        parts = canal | vertebral_body
        if spine.disc + 2 < ph < spine.pitch - 3:
            parts |= arch | (spinous if ph < 0.65 * spine.pitch else False)
            if ph < spine.disc + 10 and z < -20:
                parts |= transverse
        m = parts & bone_ok[region]
        region[m] = code[m]
        muscle = erector | quadratus if z < spine.psoas_top + 20 else erector
        if z < spine.psoas_top:
            rp = min(spine.psoas_max, 7 + 0.22 * (spine.psoas_top - z))
            muscle = muscle | (((np.abs(xx) - spine.rx - 0.75 * rp - 3) / (0.85 * rp)) ** 2
                               + ((dy - 4 + 0.2 * rp) / rp) ** 2 < 1)  # psoas
        region[muscle & soft_ok[region]] = MUSCLE

