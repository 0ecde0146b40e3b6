"""SynthSeg-style domain-randomised CT from label maps (Billot et al., Medical Image Analysis 2023).

One sample = one seeded :class:`numpy.random.Generator` and one :class:`~flare_seg.synth.label_maps.LabelMap`:

1. **Deformation of the label map itself**: a random affine (rotation, per-axis scale, shear) and a
   smooth elastic displacement, resampled (nearest neighbour) onto the work grid.
2. **Field-of-view cuts**: thin slabs (down to one slice), chest-only, pelvis-only, or a box that cuts
   organs at the border; and negatives, a chest/neck or pelvis range of the whole map with no organ
   in it (for the localizer too: trained on maps that always hold organs, it learned that every CT
   has some, and called organ whatever looked most like one in a chest or head/neck CT).
3. **Appearance**: every generation label gets its own mean and spread, drawn over the whole CT range
   (random mode) or within its tissue's realistic HU range; look-alike neighbours (liver/spleen,
   kidney/vertebra, pancreas/bowel) get overlapping intensities in a share of samples.
4. **Lesion-like blobs** of random intensity inside organs (the labels stay the organ's).
5. **Imaging**: partial-volume blur, slice thickness 0.5-7 mm and in-plane spacing 0.5-1.5 mm
   (blur to the acquisition's resolution, resampling through its grid, noise at its voxel size),
   additive bias field, gamma, and optionally the abdominal window [-160, 240] HU (clipped input).

Image and labels come from the same deformed map and are never resampled apart, so they stay
aligned. NumPy/SciPy only; every random choice comes from the given generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from flare_seg import labels as flare_labels
from flare_seg.synth.fields import resize_linear
from flare_seg.synth.label_maps import LOOKALIKES, TISSUE_HU, TISSUES, LabelMap

log = logging.getLogger(__name__)

FOV_CUTS = ("slab", "chest", "pelvis", "border")


@dataclass(frozen=True)
class DomainRandConfig:
    """Ranges of the random draws of :func:`generate`; ``(lo, hi)`` pairs are uniform."""

    work_spacing_mm: float = 2.0  # the grid a sample is generated on (isotropic)
    organ_margin_mm: float | None = None  # crop the map to the FLARE organs' box + this margin first (SCN)
    rotation_deg: float = 12.0  # standard deviation about each axis
    scale: tuple[float, float] = (0.8, 1.2)  # per axis
    shear: float = 0.06  # standard deviation of the off-diagonal terms
    elastic_mm: tuple[float, float] = (0.0, 12.0)  # standard deviation of the control-point displacements
    elastic_knots: int = 6
    fov_probability: float = 0.5
    fov_weights: tuple[float, float, float, float] = (0.4, 0.2, 0.15, 0.25)  # slab, chest, pelvis, border
    slab_mm: tuple[float, float] = (2.0, 60.0)  # log-uniform thickness of a slab cut (down to one work slice)
    #: share of samples cut from the whole map beyond the organs (both networks): chest/neck above or
    #: pelvis below them, with no organ in them (the real negatives: CTs without abdominal organs, and
    #: for the SCN the regions its organ margin drops)
    negative_probability: float = 0.1
    negative_gap_mm: tuple[float, float] = (2.0, 40.0)  # distance of a negative cut from the nearest organ
    negative_mm: tuple[float, float] = (20.0, 300.0)  # log-uniform extent of a negative cut in z
    realistic_probability: float = 0.35
    realistic_air_probability: float = 0.8  # air stays -1000 HU in random mode too
    intensity_range_hu: tuple[float, float] = (-1000.0, 1500.0)
    spread_hu: tuple[float, float] = (0.0, 45.0)
    lookalike_probability: float = 0.5  # per pair
    lookalike_sd_hu: float = 12.0
    lesion_probability: float = 0.35
    max_lesions: int = 3
    lesion_radius_mm: tuple[float, float] = (4.0, 30.0)
    slice_thickness_mm: tuple[float, float] = (0.5, 7.0)
    in_plane_mm: tuple[float, float] = (0.5, 1.5)
    blur_voxels: tuple[float, float] = (0.0, 0.6)  # extra partial-volume blur (sigma, work voxels)
    noise_hu: tuple[float, float] = (2.0, 30.0)  # at the acquisition's voxel size
    bias_hu: tuple[float, float] = (0.0, 50.0)
    gamma_probability: float = 0.5  # in random mode
    gamma_log_sd: float = 0.25
    window_probability: float = 0.15
    window_hu: tuple[float, float] = (-160.0, 240.0)


@dataclass
class GeneratedCase:
    """One sample: HU image, FLARE labels and generation labels (same grid), and what was drawn."""

    image_hu: np.ndarray  # float32 (z, y, x)
    labels: np.ndarray  # uint8 FLARE labels
    generation: np.ndarray  # uint8 generation labels
    spacing_mm: tuple[float, float, float]
    mean_hu: np.ndarray  # float32 mean HU drawn for each generation label
    info: dict


# ----------------------------------------------------------------------------- spatial
def _organ_crop(lm: LabelMap, margin_mm: float) -> tuple[slice, ...]:
    organs = lm.to_flare[lm.labels] > 0
    if not organs.any():
        return (slice(None),) * 3
    idx = [np.nonzero(organs.any(axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    m = [int(np.ceil(margin_mm / s)) for s in lm.spacing_mm]
    return tuple(slice(max(int(i[0]) - mi, 0), int(i[-1]) + mi + 1) for i, mi in zip(idx, m, strict=True))


def random_affine(rng: np.random.Generator, cfg: DomainRandConfig) -> np.ndarray:
    """3x3 matrix mapping output mm (z, y, x) to input mm: rotation, per-axis scale, shear."""
    rot = Rotation.from_euler("ZYX", rng.normal(0.0, np.deg2rad(cfg.rotation_deg), 3)).as_matrix()[::-1, ::-1]
    shear = np.eye(3) + np.triu(rng.normal(0.0, cfg.shear, (3, 3)), 1)
    return rot @ shear @ np.diag(1.0 / rng.uniform(*cfg.scale, 3))


def deform(rng: np.random.Generator, lm: LabelMap, cfg: DomainRandConfig, whole: bool = False) -> np.ndarray:
    """The label map under a random affine + elastic deformation, on the isotropic work grid.

    ``cfg.organ_margin_mm`` first crops the map to the organs' box + margin, unless ``whole``.
    """
    labels = lm.labels
    if cfg.organ_margin_mm is not None and not whole:
        labels = labels[_organ_crop(lm, cfg.organ_margin_mm)]
    spacing = np.asarray(lm.spacing_mm)
    extent = np.asarray(labels.shape) * spacing
    shape = tuple(max(int(round(e / cfg.work_spacing_mm)), 1) for e in extent)
    matrix = random_affine(rng, cfg)
    amp = rng.uniform(*cfg.elastic_mm)
    coef = rng.normal(0.0, amp, (3,) + (cfg.elastic_knots,) * 3).astype(np.float32)
    axes = [((np.arange(n) - (n - 1) / 2.0) * cfg.work_spacing_mm).astype(np.float32) for n in shape]
    coords = np.empty((3,) + shape, np.float32)
    for i in range(3):
        c = resize_linear(coef[i], shape)
        for j in range(3):
            c += np.float32(matrix[i, j]) * axes[j].reshape([-1 if k == j else 1 for k in range(3)])
        c /= np.float32(spacing[i])
        c += np.float32((labels.shape[i] - 1) / 2.0)
        coords[i] = c
    return ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=lm.outside).astype(np.uint8)


def fov_cut(rng: np.random.Generator, flare: np.ndarray, cfg: DomainRandConfig) -> tuple[tuple[slice, ...], str]:
    """Index slices of a random field-of-view cut (or the whole grid) and its kind."""
    full = tuple(slice(0, n) for n in flare.shape)
    if rng.random() >= cfg.fov_probability:
        return full, "none"
    w = np.asarray(cfg.fov_weights, float)
    kind = FOV_CUTS[int(rng.choice(len(FOV_CUTS), p=w / w.sum()))]
    nz = flare.shape[0]
    z_organs = np.nonzero((flare > 0).any(axis=(1, 2)))[0]
    top, bottom = (int(z_organs[-1]), int(z_organs[0])) if z_organs.size else (nz - 1, 0)
    vox = cfg.work_spacing_mm
    if kind == "slab":
        thick = max(1, int(round(float(np.exp(rng.uniform(*np.log(cfg.slab_mm)))) / vox)))
        z0 = int(rng.integers(max(bottom - thick // 2, 0), max(top - thick // 2, 0) + 1))
        return (slice(z0, min(z0 + thick, nz)),) + full[1:], kind
    if kind == "chest":  # from just above (or through) the organs' top to the top of the map
        z0 = int(np.clip(top + rng.uniform(-25.0, 15.0) / vox, 0, nz - 2))
        return (slice(z0, nz),) + full[1:], kind
    if kind == "pelvis":  # from the bottom of the map to just below (or through) the organs' bottom
        z1 = int(np.clip(bottom + rng.uniform(-15.0, 25.0) / vox, 2, nz))
        return (slice(0, z1),) + full[1:], kind
    lo, hi = rng.uniform(0.0, 0.35, 3), rng.uniform(0.65, 1.0, 3)  # a box cutting through the organs
    return tuple(slice(int(a * n), max(int(b * n), int(a * n) + 2)) for a, b, n in zip(lo, hi, flare.shape,
                                                                                      strict=True)), kind


def negative_cut(rng: np.random.Generator, flare: np.ndarray, cfg: DomainRandConfig) -> tuple[slice, ...] | None:
    """A z range above or below every organ of ``flare`` (none in it), or None where the map has no room."""
    nz = flare.shape[0]
    z_organs = np.nonzero((flare > 0).any(axis=(1, 2)))[0]
    if not z_organs.size:
        return (slice(0, nz),) + (slice(None),) * 2
    vox = cfg.work_spacing_mm
    gap = max(1, int(round(rng.uniform(*cfg.negative_gap_mm) / vox)))
    extent = max(4, int(round(float(np.exp(rng.uniform(*np.log(cfg.negative_mm)))) / vox)))
    above = (int(z_organs[-1]) + gap + 1, nz)
    below = (0, int(z_organs[0]) - gap)
    sides = [s for s in (above, below) if s[1] - s[0] >= 4]
    if not sides:
        return None
    lo, hi = sides[int(rng.integers(len(sides)))]
    if hi - lo <= extent:
        return (slice(lo, hi),) + (slice(None),) * 2
    return ((slice(lo, lo + extent) if (lo, hi) == above else slice(hi - extent, hi)),) + (slice(None),) * 2


# ----------------------------------------------------------------------------- appearance
def draw_intensities(rng: np.random.Generator, lm: LabelMap, cfg: DomainRandConfig) -> tuple[np.ndarray, np.ndarray,
                                                                                               bool]:
    """(mean HU, spread HU) per generation label, and whether this sample keeps realistic HU."""
    n = lm.num_labels
    realistic = bool(rng.random() < cfg.realistic_probability)
    ranges = np.asarray([TISSUE_HU[TISSUES[t]] for t in lm.tissue])
    mean = rng.uniform(ranges[:, 0], ranges[:, 1]) if realistic else rng.uniform(*cfg.intensity_range_hu, n)
    spread = rng.uniform(2.0, 15.0, n) if realistic else rng.uniform(*cfg.spread_hu, n)
    air = lm.tissue == TISSUES.index("air")
    if not realistic and rng.random() < cfg.realistic_air_probability:
        mean[air], spread[air] = rng.uniform(-1010.0, -990.0, int(air.sum())), rng.uniform(0.0, 10.0, int(air.sum()))
    for organ, neighbour in LOOKALIKES:  # touching look-alikes: the neighbour's labels near the organ's mean
        organ_labels = np.nonzero(lm.to_flare == organ)[0]
        near = np.nonzero(lm.tissue == TISSUES.index(neighbour))[0]
        near = near[lm.to_flare[near] != organ]
        if organ_labels.size and near.size and rng.random() < cfg.lookalike_probability:
            mean[near] = float(mean[organ_labels].mean()) + rng.normal(0.0, cfg.lookalike_sd_hu, near.size)
    return mean.astype(np.float32), spread.astype(np.float32), realistic


def add_lesions(rng: np.random.Generator, image: np.ndarray, flare: np.ndarray, mean: np.ndarray,
                cfg: DomainRandConfig) -> int:
    """Paint up to ``cfg.max_lesions`` ellipsoidal blobs inside organs (labels unchanged); returns how many."""
    if rng.random() >= cfg.lesion_probability:
        return 0
    count = int(rng.integers(1, cfg.max_lesions + 1))
    organs = [k for k in flare_labels.ORGANS if (flare == k).any()]
    painted = 0
    for _ in range(count if organs else 0):
        organ = organs[int(rng.integers(len(organs)))]
        where = np.argwhere(flare == organ)
        centre = where[int(rng.integers(len(where)))]
        semi = rng.uniform(*cfg.lesion_radius_mm, 3) / cfg.work_spacing_mm
        lo = np.maximum(centre - np.ceil(semi).astype(int), 0)
        hi = np.minimum(centre + np.ceil(semi).astype(int) + 1, flare.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.ogrid[box]
        inside = sum(((g - c) / s) ** 2 for g, c, s in zip(grid, centre, semi, strict=True)) < 1.0
        inside &= flare[box] == organ
        value = rng.uniform(*cfg.intensity_range_hu) if rng.random() < 0.5 else \
            float(mean[organ]) + rng.choice([-1.0, 1.0]) * rng.uniform(20.0, 150.0)
        image[box][inside] = value + rng.normal(0.0, rng.uniform(2.0, 25.0), int(inside.sum()))
        painted += 1
    return painted


# ----------------------------------------------------------------------------- imaging
def acquire(rng: np.random.Generator, image: np.ndarray, cfg: DomainRandConfig) -> dict:
    """Blur to a random acquisition resolution, resample through its grid, add noise there (in place)."""
    w = cfg.work_spacing_mm
    thickness = float(np.exp(rng.uniform(*np.log(cfg.slice_thickness_mm))))
    pixel = float(rng.uniform(*cfg.in_plane_mm))
    extra = rng.uniform(*cfg.blur_voxels)
    sigma = [np.sqrt(max(a * a - w * w, 0.0)) / 2.355 / w for a in (thickness, pixel, pixel)]
    sigma = [float(np.hypot(s, extra)) for s in sigma]
    if max(sigma) > 0.05:
        ndi.gaussian_filter(image, sigma, output=image, mode="nearest", truncate=3.0)
    noise_hu = float(rng.uniform(*cfg.noise_hu))
    factor = thickness / w
    if factor > 1.25 and image.shape[0] > 2:  # thick slices: resample through the acquisition's z grid
        n_low = max(2, int(round(image.shape[0] / factor)))
        low = resize_linear(np.ascontiguousarray(image[::1]), (n_low,) + image.shape[1:])
        low += rng.normal(0.0, noise_hu * min(1.0, pixel / w), low.shape).astype(np.float32)
        image[...] = resize_linear(low, image.shape)
    else:  # voxels finer than the work grid: averaging lowers the noise
        scale = float(np.sqrt(min(1.0, thickness * pixel * pixel / w ** 3)))
        image += rng.normal(0.0, noise_hu * scale, image.shape).astype(np.float32)
    return {"slice_thickness_mm": thickness, "in_plane_mm": pixel, "noise_hu": noise_hu}


def bias_and_gamma(rng: np.random.Generator, image: np.ndarray, realistic: bool, cfg: DomainRandConfig) -> None:
    """Additive smooth bias field, and (random mode) a gamma curve over the image's range (in place)."""
    amp = rng.uniform(*cfg.bias_hu)
    coef = rng.normal(0.0, 1.0, (4, 4, 4)).astype(np.float32)
    if amp > 0:
        image += np.float32(amp) * resize_linear(coef, image.shape)
    if not realistic and rng.random() < cfg.gamma_probability:
        lo, hi = float(image.min()), float(image.max())
        if hi > lo:
            gamma = float(np.exp(rng.normal(0.0, cfg.gamma_log_sd)))
            image[...] = lo + (hi - lo) * ((image - lo) / (hi - lo)) ** gamma


def generate(rng: np.random.Generator, lm: LabelMap, cfg: DomainRandConfig | None = None) -> GeneratedCase:
    """One domain-randomised CT sample from ``lm`` (see the module docstring for the steps)."""
    cfg = cfg or DomainRandConfig()
    negative = rng.random() < cfg.negative_probability
    gen = deform(rng, lm, cfg, whole=negative)
    flare = lm.to_flare[gen]
    cut = negative_cut(rng, flare, cfg) if negative else None
    if cut is not None:
        kind = "negative"
    else:
        cut, kind = fov_cut(rng, flare, cfg)
    gen = np.ascontiguousarray(gen[cut])
    flare = np.ascontiguousarray(flare[cut])
    mean, spread, realistic = draw_intensities(rng, lm, cfg)
    image = mean[gen]
    image += spread[gen] * rng.standard_normal(gen.shape, dtype=np.float32)
    flare_mean = np.zeros(flare_labels.NUM_LABELS, np.float32)
    for k in flare_labels.ORGANS:
        if (lm.to_flare == k).any():
            flare_mean[k] = float(mean[lm.to_flare == k].mean())
    lesions = add_lesions(rng, image, flare, flare_mean, cfg)
    info = {"fov": kind, "realistic": realistic, "lesions": lesions, **acquire(rng, image, cfg)}
    bias_and_gamma(rng, image, realistic, cfg)
    info["windowed"] = bool(rng.random() < cfg.window_probability)
    lo, hi = cfg.window_hu if info["windowed"] else (-1024.0, 3071.0)
    np.clip(image, lo, hi, out=image)
    spacing = (float(cfg.work_spacing_mm),) * 3
    return GeneratedCase(image, flare, gen, spacing, mean, info)
