"""Segmentation metrics as small pure functions, with FLARE's edge rules written once (DSC, NSD).

FLARE rules (``../shared/FLARE21.md``): an organ absent from both ground truth and prediction
scores 1; absent from the ground truth but predicted scores 0; present in the ground truth but
not predicted scores 0. They hold for DSC and NSD alike.

NSD (normalized surface Dice) follows DeepMind's ``surface-distance`` package exactly (same
surfels, areas and distance transform), re-implemented here because that package (0.1, the only
release) uses ``np.Inf``, which NumPy 2 removed, so it cannot be imported at run time;
``tests/test_metrics.py`` compares the two (with ``np.Inf`` restored for the test). All spacings
are per array axis, in the arrays' axis order, which is ``(z, y, x)`` throughout this project.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from flare_seg.labels import NAMES, ORGANS


def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks; 1.0 when both are empty (FLARE rule)."""
    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"mask shapes differ: prediction {pred_mask.shape}, ground truth {gt_mask.shape}")
    total = int(pred_mask.sum()) + int(gt_mask.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred_mask, gt_mask).sum()) / total


def dice_per_label(pred: np.ndarray, gt: np.ndarray, labels=ORGANS) -> dict[str, float]:
    """DSC per organ name for integer label maps ``pred`` and ``gt`` of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"label map shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    return {NAMES[label]: dice(pred == label, gt == label) for label in labels}


# ---------------------------------------------------------------------------------------------
# Surface distances and normalized surface Dice (NSD), equivalent to DeepMind's `surface-distance`
# (compute_surface_distances, compute_surface_dice_at_tolerance), which FLARE's evaluation uses.
# ---------------------------------------------------------------------------------------------

#: NSD tolerance per organ in mm. FLARE21 used 1 mm for every organ; FLARE22 per-organ tolerances.
PROTOCOLS: dict[str, dict[str, float]] = {
    "flare21": {"liver": 1.0, "kidney": 1.0, "spleen": 1.0, "pancreas": 1.0},
    "flare22": {"liver": 5.0, "kidney": 3.0, "spleen": 3.0, "pancreas": 5.0},
}


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from every surface element of one mask to the other mask's surface, sorted
    ascending, with the area (mm^2) of each element in the same order. Empty masks give empty
    arrays; a surface facing an empty mask has all distances ``inf``."""

    distances_gt_to_pred: np.ndarray
    distances_pred_to_gt: np.ndarray
    surfel_areas_gt: np.ndarray
    surfel_areas_pred: np.ndarray


@functools.lru_cache(maxsize=1)
def _surfel_normals() -> np.ndarray:
    """Area-weighted normals (index units) of the triangles of each 2x2x2 neighbour code, (256, 4, 3).

    Bit ``7 - (4a + 2b + c)`` of a code is the voxel at offset ``(a, b, c)`` of the 2x2x2
    neighbourhood. The triangles are Lorensen & Cline's marching-cubes cases for whichever side
    has at most 4 voxels (a configuration and its complement bound the same surface), which is
    what DeepMind's lookup table holds: the areas agree with it to 3e-16 for every code
    (tests/test_metrics.py compares all 256).
    """
    from skimage.measure import marching_cubes

    normals = np.zeros((256, 4, 3))
    for code in range(1, 255):
        minority = code if bin(code).count("1") <= 4 else 255 - code
        corners = np.array([(minority >> (7 - k)) & 1 for k in range(8)], np.float32).reshape(2, 2, 2)
        verts, faces, _, _ = marching_cubes(corners, 0.5, method="lorensen")
        tri = verts[faces].astype(np.float64)
        normals[code, : len(faces)] = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]) / 2.0
    return normals


def surfel_area_table(spacing_mm) -> np.ndarray:
    """Surface area (mm^2) of the surface element of each of the 256 neighbour codes.

    A triangle with index-space normal ``n`` has area ``|(n0*s1*s2, n1*s0*s2, n2*s0*s1)|`` after
    scaling the axes by the spacing ``s`` (the cross product of two scaled edges).
    """
    s0, s1, s2 = (float(s) for s in spacing_mm)
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.linalg.norm(_surfel_normals() * scale, axis=2).sum(axis=1)


def _check_masks(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm) -> tuple[float, float, float]:
    if mask_gt.ndim != 3 or mask_gt.shape != mask_pred.shape:
        raise ValueError(f"masks must be 3-D of the same shape, got ground truth {mask_gt.shape}, "
                         f"prediction {mask_pred.shape}")
    spacing = tuple(float(s) for s in np.ravel(spacing_mm))
    if len(spacing) != 3 or min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise ValueError(f"spacing_mm must be 3 positive finite values (one per array axis), got {spacing_mm}")
    return spacing


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """The 8-bit code of every 2x2x2 neighbourhood of ``mask`` padded by one empty voxel each side.

    Code ``q`` sits on the voxel corner between voxels ``q-1`` and ``q``; it equals DeepMind's
    ``correlate(crop, ENCODE_NEIGHBOURHOOD_3D_KERNEL)`` on their zero-padded crop.
    """
    padded = np.pad(mask.astype(np.uint8), 1)
    n0, n1, n2 = (n - 1 for n in padded.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for a, b, c in itertools.product((0, 1), repeat=3):
        codes |= padded[a : a + n0, b : b + n1, c : c + n2] << np.uint8(7 - (4 * a + 2 * b + c))
    return codes


def _sorted_by_distance(distances: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((areas, distances))  # as DeepMind's sorted(zip(distances, areas))
    return distances[order], areas[order]


def compute_surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing_mm) -> SurfaceDistances:
    """Distances between the surfaces of two 3-D boolean masks, as DeepMind's function of that name.

    ``spacing_mm`` is given per array axis, in the arrays' own axis order (``(z, y, x)`` for this
    project's arrays). Surface elements ("surfels") lie on voxel corners whose 2x2x2
    neighbourhood is partly inside the mask; each carries its marching-cubes area.
    """
    mask_gt = np.asarray(mask_gt, dtype=bool)
    mask_pred = np.asarray(mask_pred, dtype=bool)
    spacing = _check_masks(mask_gt, mask_pred, spacing_mm)
    either = mask_gt | mask_pred
    if not either.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty.copy(), empty.copy(), empty.copy())
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(either))
    codes_gt, codes_pred = _neighbour_codes(mask_gt[box]), _neighbour_codes(mask_pred[box])
    borders_gt = (codes_gt != 0) & (codes_gt != 255)
    borders_pred = (codes_pred != 0) & (codes_pred != 255)
    areas = surfel_area_table(spacing)
    dist_to_gt = _distance_map(borders_gt, spacing)
    dist_to_pred = _distance_map(borders_pred, spacing)
    gt = _sorted_by_distance(dist_to_pred[borders_gt], areas[codes_gt[borders_gt]])
    pred = _sorted_by_distance(dist_to_gt[borders_pred], areas[codes_pred[borders_pred]])
    return SurfaceDistances(gt[0], pred[0], gt[1], pred[1])


def _distance_map(borders: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm) of every corner to the nearest surfel of ``borders``; ``inf`` without surfels."""
    if not borders.any():
        return np.full(borders.shape, np.inf)
    from scipy import ndimage

    return ndimage.distance_transform_edt(~borders, sampling=spacing)


def compute_surface_dice_at_tolerance(distances: SurfaceDistances, tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm``: the surfel area of both surfaces lying within the tolerance
    of the other surface, over the total surfel area. NaN when neither mask has a surface
    (DeepMind's 0/0); FLARE's rule for that case is in :func:`normalized_surface_dice`."""
    total = float(np.sum(distances.surfel_areas_gt) + np.sum(distances.surfel_areas_pred))
    if total == 0.0:
        return float("nan")
    overlap_gt = np.sum(distances.surfel_areas_gt[distances.distances_gt_to_pred <= tolerance_mm])
    overlap_pred = np.sum(distances.surfel_areas_pred[distances.distances_pred_to_gt <= tolerance_mm])
    return float((overlap_gt + overlap_pred) / total)


def normalized_surface_dice(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_mm, tolerance_mm: float) -> float:
    """NSD of two binary masks with FLARE's rules: 1 when both are empty, 0 when only one is."""
    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    _check_masks(gt_mask, pred_mask, spacing_mm)
    gt_any, pred_any = bool(gt_mask.any()), bool(pred_mask.any())
    if not gt_any or not pred_any:
        return 1.0 if gt_any == pred_any else 0.0
    return compute_surface_dice_at_tolerance(compute_surface_distances(gt_mask, pred_mask, spacing_mm), tolerance_mm)


def protocol_tolerances(protocol: str | dict[str, float]) -> dict[str, float]:
    """NSD tolerance (mm) per organ name: a key of :data:`PROTOCOLS` or an explicit dict."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}")
        return dict(PROTOCOLS[protocol])
    organs = {NAMES[label] for label in ORGANS}
    unknown = set(protocol) - organs
    if unknown or not protocol:
        raise ValueError(f"protocol tolerances must name organs of {sorted(organs)}, got {sorted(protocol)}")
    return {name: float(tol) for name, tol in protocol.items()}


def score_case(pred: np.ndarray, gt: np.ndarray, spacing_mm, protocol: str | dict[str, float] = "flare21",
               ) -> dict[str, dict[str, float]]:
    """DSC and NSD per organ of one case: ``{organ: {"dsc": ..., "nsd": ...}}``.

    ``pred`` and ``gt`` are FLARE21 label maps on the same grid; ``spacing_mm`` is the ground
    truth's, in the arrays' axis order. FLARE rules: organ absent from both scores 1, absent from
    one of them scores 0.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"label map shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    tolerances = protocol_tolerances(protocol)
    label_of = {NAMES[label]: label for label in ORGANS}
    scores = {}
    for organ, tolerance_mm in tolerances.items():
        pred_mask, gt_mask = pred == label_of[organ], gt == label_of[organ]
        scores[organ] = {"dsc": dice(pred_mask, gt_mask),
                         "nsd": normalized_surface_dice(pred_mask, gt_mask, spacing_mm, tolerance_mm)}
    return scores



# ---------------------------------------------------------------------------------------------
# Precision and recall (seed 003's metrics) and the false positives far from the organ.
# ---------------------------------------------------------------------------------------------

#: A predicted voxel farther than this from the ground-truth organ is a "far" false positive: the
#: kind of error the SCN's spatial part exists to remove (an organ called in the wrong place).
FAR_MM = 20.0


def precision_recall(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[float, float]:
    """``(TP / (TP + FP), TP / (TP + FN))`` with FLARE's edge rules: 1 when both masks are empty, 0 when
    only one is (an organ predicted but absent has precision and recall 0, and so has one missed)."""
    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    if pred_mask.shape != gt_mask.shape:
        raise ValueError(f"mask shapes differ: prediction {pred_mask.shape}, ground truth {gt_mask.shape}")
    n_pred, n_gt = int(pred_mask.sum()), int(gt_mask.sum())
    if n_pred == 0 or n_gt == 0:
        return (1.0, 1.0) if n_pred == n_gt else (0.0, 0.0)
    tp = int(np.logical_and(pred_mask, gt_mask).sum())
    return tp / n_pred, tp / n_gt


def far_false_positive_ml(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing_mm, far_mm: float = FAR_MM) -> float:
    """Volume (ml) of predicted voxels more than ``far_mm`` from the ground-truth mask (all of them
    when the ground truth is empty)."""
    from scipy import ndimage

    pred_mask = np.asarray(pred_mask, dtype=bool)
    gt_mask = np.asarray(gt_mask, dtype=bool)
    spacing = _check_masks(gt_mask, pred_mask, spacing_mm)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if not pred_mask.any():
        return 0.0
    if not gt_mask.any():
        return int(pred_mask.sum()) * voxel_ml
    distance = ndimage.distance_transform_edt(~gt_mask, sampling=spacing)
    return int(np.count_nonzero(pred_mask & (distance > far_mm))) * voxel_ml


def detection_scores(pred: np.ndarray, gt: np.ndarray, spacing_mm, organs=None) -> dict[str, dict[str, float]]:
    """Precision, recall and far false positives (ml) per organ: ``{organ: {"precision", "recall", "far_fp_ml"}}``."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"label map shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    label_of = {NAMES[label]: label for label in ORGANS}
    scores = {}
    for organ in organs or label_of:
        pred_mask, gt_mask = pred == label_of[organ], gt == label_of[organ]
        precision, recall = precision_recall(pred_mask, gt_mask)
        scores[organ] = {"precision": precision, "recall": recall,
                         "far_fp_ml": far_false_positive_ml(pred_mask, gt_mask, spacing_mm)}
    return scores
