"""Intensities and imaging: contrast phase, HU lookup tables, slice-thickness blur, noise, the in-plane
reconstruction kernel and a bias field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flare_seg.synth.fields import profile, u
from flare_seg.synth.tissues import (
    ABOVE_DOME,
    BOWEL_FLUID,
    LUNG,
    PHASE_HU,
    PHASE_TISSUES,
    PHASES,
    STATIC_HU,
    TISSUE_LABEL,
)

LABEL_LUT = np.zeros(256, np.uint8)
LABEL_LUT[list(TISSUE_LABEL)] = list(TISSUE_LABEL.values())


def draw_phase(rng, cfg):
    names = [p for p, _ in cfg.phase_weights]
    unknown = set(names) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown contrast phase(s) {sorted(unknown)}; known: {PHASES}")
    w = np.asarray([max(float(w), 0.0) for _, w in cfg.phase_weights])
    if w.sum() <= 0:
        raise ValueError("PhantomConfig.phase_weights must have a positive weight")
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def draw_hu(rng, cfg, phase):
    """HU lookup table (256 tissue codes) for one phantom in the given contrast phase."""
    lut = np.zeros(256, np.float32)
    for code, lo_hi in sorted(STATIC_HU.items()):
        lut[code] = u(rng, lo_hi)
    for code, lo_hi in zip(PHASE_TISSUES, PHASE_HU[phase], strict=True):
        lut[code] = u(rng, lo_hi)
    lut[ABOVE_DOME] = lut[LUNG]
    if rng.random() < cfg.oral_contrast_probability:
        lut[BOWEL_FLUID] = u(rng, (150.0, 400.0))
    return lut


@dataclass(frozen=True)
class Imaging:
    """How one phantom is imaged: noise, in-plane kernel weight, slice thickness, bias field."""

    noise_hu: float
    kernel_w: float  # in-plane [w, 1-2w, w] kernel
    thickness_mm: float
    bias_hu: float
    bias_coef: np.ndarray  # (3, 6) coefficients of the z, y, x bias profiles


def draw_imaging(rng, cfg, bias=False):
    return Imaging(
        noise_hu=u(rng, cfg.noise_sigma_hu), kernel_w=u(rng, cfg.kernel_smoothing),
        thickness_mm=u(rng, cfg.slice_thickness_mm),
        bias_hu=u(rng, cfg.bias_field_hu) if bias else 0.0, bias_coef=rng.standard_normal((3, 6)))


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


def render(rng, cv, lut, im, chunk=8):
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
        bz, by, bx = (profile(im.bias_coef[i:i + 1], ax, -300.0, 300.0)[0].astype(np.float32)
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

