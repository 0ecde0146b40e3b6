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

Layout: :mod:`~flare_seg.synth.tissues` (codes, HU tables, :class:`PhantomConfig`),
:mod:`~flare_seg.synth.fields` (math), :mod:`~flare_seg.synth.canvas`, :mod:`~flare_seg.synth.body`
(body wall, ribs, spine), :mod:`~flare_seg.synth.organs`, :mod:`~flare_seg.synth.render`; this module
composes them and keeps the public API.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from flare_seg import labels as flare_labels
from flare_seg.synth.body import Body, Spine, derive_body, draw_body, draw_spine, paint_body, paint_spine
from flare_seg.synth.canvas import Canvas
from flare_seg.synth.organs import PAINTERS, Structure, draw_hollow_organs, draw_solid_organs, draw_vessels
from flare_seg.synth.render import LABEL_LUT, draw_hu, draw_imaging, draw_phase, render
from flare_seg.synth.tissues import (  # noqa: F401  (public names re-exported)
    ABOVE_DOME,
    ARTERY,
    LM_BASE,
    LUNG,
    PHASE_HU,
    PHASES,
    REAL_SLAB_MEAN_HU,
    STATIC_HU,
    VEIN,
    PhantomConfig,
)

log = logging.getLogger(__name__)

__all__ = ["PHASES", "PHASE_HU", "REAL_SLAB_MEAN_HU", "STATIC_HU", "PhantomConfig", "make_phantom",
           "make_tissue_map", "organ_mean_hu", "phantom_from_label_map"]


@dataclass
class Anatomy:
    """A drawn body: outline and layers, spine, and the structures in painting order."""

    body: Body
    spine: Spine
    structs: list[Structure]


def _draw_anatomy(rng, cfg, fit=None):
    """Draw a whole body; ``fit(body)`` may enlarge it (label-map mode) before organs are placed."""
    body = draw_body(rng, cfg)
    if fit is not None:
        fit(body)
    return Anatomy(body=body, spine=draw_spine(rng, body), structs=draw_vessels(rng, body)
                           + draw_solid_organs(rng, cfg, body) + draw_hollow_organs(rng, cfg, body))


def _paint_anatomy(cv, anat, structs=None, stamp=None):
    """Paint body, spine and structures in priority order; ``stamp`` (codes, 0 = none) wins last."""
    paint_body(cv, anat.body)
    paint_spine(cv, anat.spine)
    for s in anat.structs if structs is None else structs:
        PAINTERS[s.kind](cv, s)
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
    phase = draw_phase(rng, cfg)
    lut, imaging = draw_hu(rng, cfg, phase), draw_imaging(rng, cfg)
    cv = Canvas(shape_zyx, spacing_mm, field_of_view_shift_mm)
    _paint_anatomy(cv, anat)
    t1 = time.perf_counter()
    ct = render(rng, cv, lut, imaging)
    log.debug("phantom %s at %s mm, %s phase: anatomy %.2fs, render %.2fs", cv.shape, tuple(spacing_mm),
              phase, t1 - t0, time.perf_counter() - t1)
    return ct, LABEL_LUT[cv.tissue]


def make_tissue_map(rng: np.random.Generator, shape_zyx=(72, 96, 96), spacing_mm=(4.0, 4.0, 4.0),
                    config: PhantomConfig | None = None, field_of_view_shift_mm=(0.0, 0.0, 0.0)) -> np.ndarray:
    """The parametric body's tissue map (uint8 tissue codes of :mod:`flare_seg.synth.tissues`), not rendered:
    the label map the domain-randomised generator gives random intensities. ``render.LABEL_LUT`` maps
    it to FLARE labels."""
    cfg = config or PhantomConfig()
    anat = _draw_anatomy(rng, cfg)
    cv = Canvas(shape_zyx, spacing_mm, field_of_view_shift_mm)
    _paint_anatomy(cv, anat)
    return cv.tissue


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


def _fit_body(body, pts_yx, spine_yx, margin=0.92):
    """Enlarge the body cavity until the organs' axial projection (FOV mm, relative to the spine)
    lies well inside it."""
    for _ in range(8):
        if not len(pts_yx):
            break
        derive_body(body)
        y, x = pts_yx[:, 0] - spine_yx[0] + body.spine_y, pts_yx[:, 1] - spine_yx[1]
        b_post_cav = body.spine_y + body.cavity_back
        s = (x / body.a_cav) ** 2 + np.where(y < 0, (y / (body.depth - body.spine_y)) ** 2,
                                          np.abs(y / b_post_cav) ** body.p_post)
        worst = float(s.max()) / margin
        if worst <= 1.0:
            break
        grow = np.sqrt(worst)
        body.a_cav, body.depth, body.cavity_back = body.a_cav * grow, body.depth * grow, body.cavity_back * grow
    derive_body(body)


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
    anat = _draw_anatomy(rng, cfg, fit=lambda body: _fit_body(body, pts, spine_yx))
    body = anat.body
    shift_z = body.dome_top - 12.0 - top_z if top_z is not None else 0.0
    cv = Canvas(label_map.shape, spacing_mm, (shift_z, body.spine_y - spine_yx[0], -spine_yx[1]))
    keep = ("heart", "bowel") if source == "amos" else ("heart", "bowel", "viscus")
    structs = [s for s in anat.structs if s.kind in keep or (source == "flare" and s.kind == "tube"
                                                              and s.code in (ARTERY, VEIN))]
    stamp = np.where(label_map > 0, label_map.astype(np.uint8) + np.uint8(LM_BASE), np.uint8(0))
    _paint_anatomy(cv, anat, structs, stamp)
    lut = draw_hu(rng, cfg, draw_phase(rng, cfg))
    lut[:LM_BASE] += rng.uniform(-15.0, 15.0, LM_BASE).astype(np.float32) * (lut[:LM_BASE] > -500)
    lut[LM_BASE + 1:LM_BASE + 16] = rng.uniform(*cfg.label_map_hu, 15)
    ct = render(rng, cv, lut, draw_imaging(rng, cfg, bias=True))
    flare = flare_labels.map_labels(label_map, "amos") if source == "amos" else label_map.astype(np.uint8)
    log.debug("label-map phantom %s (%s): %.2fs", label_map.shape, source, time.perf_counter() - t0)
    return ct, flare

