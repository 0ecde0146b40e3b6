"""Metrics: DSC and NSD by hand-worked values, FLARE's edge rules, and exact agreement with DeepMind's
``surface-distance`` (the package FLARE's evaluation used) on random anisotropic blobs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flare_seg.evaluation import metrics
from flare_seg.labels import KIDNEY, LIVER, PANCREAS, SPLEEN

#: Spacing (z, y, x) for the shifted-cube cases: every non-zero corner-to-corner distance is at
#: least 1.25 mm (> the 1 mm FLARE21 tolerance) and the largest one needed is 3 mm.
SPACING_MM = (3.0, 1.5, 1.25)


@pytest.fixture(scope="module")
def deepmind():
    """DeepMind's ``surface_distance.metrics``; it uses ``np.Inf``, removed in NumPy 2."""
    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(np, "Inf"):
            patch.setattr(np, "Inf", np.inf, raising=False)
        yield pytest.importorskip("surface_distance.metrics")


def cube(shape=(10, 10, 10), corner=(2, 2, 2), size=4) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(c, c + size) for c in corner)] = True
    return mask


def shifted_cube_nsd_at_zero_distance(k: int, spacing_mm) -> float:
    """NSD of a k-voxel cube against itself shifted one voxel along z, counting only the surfels
    that lie on both surfaces (distance 0), worked out from the surfel classes.

    Surfels sit on voxel corners (0..k per axis for the cube). Marching-cubes areas with spacing
    (sz, sy, sx): face corner ``sy*sx`` (z-normal), ``sz*sx`` (y), ``sz*sy`` (x); edge corner along
    axis a: half that edge length times the diagonal of the other two spacings; cube vertex: the
    triangle of three half-edges.
    """
    sz, sy, sx = spacing_mm
    vertex = 0.125 * math.sqrt((sy * sx) ** 2 + (sz * sx) ** 2 + (sz * sy) ** 2)
    edge_z, edge_y, edge_x = (0.5 * sz * math.hypot(sy, sx), 0.5 * sy * math.hypot(sz, sx),
                              0.5 * sx * math.hypot(sz, sy))
    face_z, face_y, face_x = sy * sx, sz * sx, sz * sy
    total = 8 * vertex + 4 * (k - 1) * (edge_z + edge_y + edge_x) + 2 * (k - 1) ** 2 * (face_z + face_y + face_x)
    # Shared corners: the lateral ring at corner levels z = 1..k. Levels 1..k-1 are side-face
    # corners of the cube (vertical edges at the 4 ring corners); level k is the cube's top rim.
    shared = ((k - 1) * (4 * edge_z + 2 * (k - 1) * (face_y + face_x))
              + 4 * vertex + 2 * (k - 1) * (edge_x + edge_y))
    # The shifted cube is a translate of the cube, so both surfaces contribute equally.
    return shared / total


def test_identical_masks_score_one():
    mask = cube()
    assert metrics.dice(mask, mask) == 1.0
    assert metrics.normalized_surface_dice(mask, mask, SPACING_MM, 1.0) == 1.0
    distances = metrics.compute_surface_distances(mask, mask, SPACING_MM)
    assert np.all(distances.distances_gt_to_pred == 0) and np.all(distances.distances_pred_to_gt == 0)


def test_two_single_voxels_two_voxels_apart():
    """Voxels 2 apart along x (1 mm): each has 8 vertex surfels, 4 at 1 mm and 4 at 2 mm from the other."""
    gt = np.zeros((3, 3, 6), bool)
    pred = gt.copy()
    gt[1, 1, 1] = True
    pred[1, 1, 3] = True
    spacing = (2.5, 1.7, 1.0)
    distances = metrics.compute_surface_distances(gt, pred, spacing)
    np.testing.assert_array_equal(distances.distances_gt_to_pred, [1.0] * 4 + [2.0] * 4)
    area = 0.125 * math.sqrt((1.7 * 1.0) ** 2 + (2.5 * 1.0) ** 2 + (2.5 * 1.7) ** 2)
    np.testing.assert_allclose(distances.surfel_areas_gt, [area] * 8, rtol=1e-14)
    assert metrics.normalized_surface_dice(pred, gt, spacing, 0.99) == 0.0
    assert metrics.normalized_surface_dice(pred, gt, spacing, 1.0) == pytest.approx(0.5, abs=1e-15)
    assert metrics.normalized_surface_dice(pred, gt, spacing, 2.0) == 1.0
    assert metrics.dice(pred, gt) == 0.0


def test_cube_shifted_one_voxel_along_z_hand_worked():
    gt = cube()
    pred = np.roll(gt, 1, axis=0)
    assert metrics.dice(pred, gt) == 0.75  # 2 * 48 / (64 + 64)
    expected = shifted_cube_nsd_at_zero_distance(4, SPACING_MM)
    assert expected == pytest.approx(0.7696436, abs=1e-7)  # the number quoted in docs/evaluation.md
    assert metrics.normalized_surface_dice(pred, gt, SPACING_MM, 1.0) == pytest.approx(expected, rel=1e-12)
    # Every surfel is within 3 mm (one z step) of the other surface.
    assert metrics.normalized_surface_dice(pred, gt, SPACING_MM, 3.0) == 1.0
    # The spacing is per array axis: reversed (x, y, z) order would give another value.
    reversed_nsd = metrics.normalized_surface_dice(pred, gt, SPACING_MM[::-1], 1.0)
    assert abs(reversed_nsd - expected) > 0.01


def test_edge_rules_for_dsc_and_nsd():
    empty = np.zeros((6, 6, 6), bool)
    organ = cube((6, 6, 6), (1, 1, 1), 3)
    both_absent = metrics.score_case(np.zeros((6, 6, 6), np.uint8), np.zeros((6, 6, 6), np.uint8), SPACING_MM)
    assert both_absent == {name: {"dsc": 1.0, "nsd": 1.0} for name in ("liver", "kidney", "spleen", "pancreas")}
    for pred, gt in ((organ, empty), (empty, organ)):  # only predicted; only in ground truth
        assert metrics.dice(pred, gt) == 0.0
        assert metrics.normalized_surface_dice(pred, gt, SPACING_MM, 100.0) == 0.0


def test_score_case_flare21_and_flare22_differ():
    gt = np.zeros((10, 10, 10), np.uint8)
    gt[cube()] = LIVER
    gt[0, 0, 0] = SPLEEN
    pred = np.roll(gt, 1, axis=0)  # liver shifted one z step; spleen voxel moved to z = 1
    flare21 = metrics.score_case(pred, gt, SPACING_MM, "flare21")
    flare22 = metrics.score_case(pred, gt, SPACING_MM, "flare22")
    expected = shifted_cube_nsd_at_zero_distance(4, SPACING_MM)
    assert flare21["liver"] == {"dsc": 0.75, "nsd": pytest.approx(expected, rel=1e-12)}
    assert flare22["liver"] == {"dsc": 0.75, "nsd": 1.0}  # 5 mm covers the 3 mm shift
    # One spleen voxel moved 3 mm: vertex surfels 0 mm (4 of 8) and 3 mm away (the other 4).
    assert flare21["spleen"]["nsd"] == pytest.approx(0.5, abs=1e-15) and flare22["spleen"]["nsd"] == 1.0
    assert flare21["kidney"] == flare21["pancreas"] == {"dsc": 1.0, "nsd": 1.0}
    assert metrics.PROTOCOLS["flare22"] == {"liver": 5.0, "kidney": 3.0, "spleen": 3.0, "pancreas": 5.0}
    custom = metrics.score_case(pred, gt, SPACING_MM, {"liver": 3.0})
    assert list(custom) == ["liver"] and custom["liver"]["nsd"] == 1.0


def test_score_case_rejects_bad_input():
    labels = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.score_case(labels, np.zeros((4, 4, 5), np.uint8), SPACING_MM)
    with pytest.raises(ValueError, match="unknown protocol"):
        metrics.score_case(labels, labels, SPACING_MM, "flare99")
    with pytest.raises(ValueError, match="spacing_mm"):
        metrics.normalized_surface_dice(labels == 0, labels == 0, (1.0, 0.0, 1.0), 1.0)
    assert metrics.dice_per_label(labels, labels) == {"liver": 1.0, "kidney": 1.0, "spleen": 1.0, "pancreas": 1.0}
    organs = np.zeros((4, 4, 4), np.uint8)
    organs[0], organs[1], organs[2], organs[3] = LIVER, KIDNEY, SPLEEN, PANCREAS
    kidney_called_spleen = np.where(organs == KIDNEY, SPLEEN, organs).astype(np.uint8)
    assert metrics.dice_per_label(kidney_called_spleen, organs) == {  # each score lands on its organ's name
        "liver": 1.0, "kidney": 0.0, "spleen": pytest.approx(2 * 16 / (32 + 16)), "pancreas": 1.0}


def test_surfel_area_table_equals_deepmind_for_all_codes(deepmind):
    from surface_distance import lookup_tables

    for spacing in ((1.0, 1.0, 1.0), SPACING_MM, (0.8145, 0.8145, 2.528), (4.7, 0.31, 1.9)):
        np.testing.assert_allclose(metrics.surfel_area_table(spacing),
                                   lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
                                   rtol=1e-14, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("seed", range(6))
def test_equals_deepmind_on_random_blobs(deepmind, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(10, 28, 3))
    gt, pred = (ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52 for _ in range(2))
    if seed == 0:
        gt[:, :, 0] = True  # touching the array border
    spacing = tuple(float(s) for s in rng.uniform(0.5, 4.0, 3))
    ours = metrics.compute_surface_distances(gt, pred, spacing)
    theirs = deepmind.compute_surface_distances(gt, pred, spacing)
    for key, value in theirs.items():
        np.testing.assert_allclose(getattr(ours, key), value, rtol=1e-12, atol=1e-12, err_msg=key)
    for tolerance_mm in (0.5, 1.0, 2.0, 3.0, 5.0):
        assert metrics.compute_surface_dice_at_tolerance(ours, tolerance_mm) == pytest.approx(
            deepmind.compute_surface_dice_at_tolerance(theirs, tolerance_mm), rel=1e-12, abs=1e-14)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_equals_deepmind_when_one_mask_is_empty(deepmind):
    gt = cube()
    empty = np.zeros_like(gt)
    ours = metrics.compute_surface_distances(gt, empty, SPACING_MM)
    theirs = deepmind.compute_surface_distances(gt, empty, SPACING_MM)
    assert np.all(np.isinf(ours.distances_gt_to_pred)) and ours.distances_pred_to_gt.size == 0
    np.testing.assert_allclose(ours.surfel_areas_gt, theirs["surfel_areas_gt"], rtol=1e-14)
    assert metrics.compute_surface_dice_at_tolerance(ours, 1.0) == 0.0
    assert math.isnan(metrics.compute_surface_dice_at_tolerance(
        metrics.compute_surface_distances(empty, empty, SPACING_MM), 1.0))
