"""Geometry, tolerances and exact reorientation (checked against SimpleITK's DICOMOrient)."""

import numpy as np
import pytest

from flare_seg.geometry import Geometry, from_canonical, rotation_direction, to_canonical

DIRECTIONS = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "ras": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "flip_z": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "permuted": (0, 1, 0, -1, 0, 0, 0, 0, 1),
    "permuted_zx": (0, 0, 1, 0, -1, 0, 1, 0, 0),
    "oblique": rotation_direction((0.15, -0.1, 0.25)),
}


def test_mismatch_uses_project_tolerances():
    g = Geometry((3, 4, 5), (1.0, 0.8, 0.8), (1.0, 2.0, 3.0))
    assert g.matches(Geometry((3, 4, 5), (1.0 + 5e-5, 0.8, 0.8), (1.0, 2.0 + 5e-5, 3.0)))
    assert "spacing" in g.mismatch(Geometry((3, 4, 5), (1.0 + 2e-4, 0.8, 0.8), (1.0, 2.0, 3.0)))
    assert "origin" in g.mismatch(Geometry((3, 4, 5), (1.0, 0.8, 0.8), (1.0, 2.0, 3.0002)))
    assert "direction" in g.mismatch(Geometry((3, 4, 5), (1.0, 0.8, 0.8), (1.0, 2.0, 3.0),
                                              (1, 0, 0, 0, 1, 2e-6, 0, 0, 1)))
    assert "size" in g.mismatch(Geometry((3, 4, 6), (1.0, 0.8, 0.8), (1.0, 2.0, 3.0)))
    # the GE 3-slice series: 0.9999999999999929 mm from DICOM vs 1.0 from NIfTI is the same grid
    assert Geometry((3, 4, 5), (0.9999999999999929, 1, 1)).matches(Geometry((3, 4, 5), (1.0, 1, 1)))


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_canonical_round_trip_is_exact_and_keeps_physical_positions(name):
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)
    geometry = Geometry((4, 5, 6), (2.5, 0.7, 0.9), (10.0, -20.0, 30.0), tuple(float(v) for v in DIRECTIONS[name]))
    canon, canon_geometry, orient = to_canonical(array, geometry)
    # every voxel keeps its physical position
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        value = array[index]
        where = np.argwhere(canon == value)
        physical = geometry.index_to_physical(index)
        assert any(np.allclose(canon_geometry.index_to_physical(w), physical, atol=1e-6) for w in where)
    # the canonical direction is closest to identity (positive diagonal dominates)
    d = np.asarray(canon_geometry.direction).reshape(3, 3)
    assert np.all(np.diag(d) > 0.5)
    np.testing.assert_array_equal(from_canonical(canon, orient), array)
    # channels ride along
    stacked = np.stack([array, array + 1], axis=-1)
    np.testing.assert_array_equal(from_canonical(to_canonical(stacked, geometry)[0], orient), stacked)


@pytest.mark.parametrize("name", ["identity", "ras", "permuted", "permuted_zx", "oblique"])
def test_canonical_matches_simpleitk_dicomorient(name):
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(1)
    array = rng.integers(0, 100, size=(4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 0.7, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(tuple(float(v) for v in DIRECTIONS[name]))
    reoriented = sitk.DICOMOrient(image, "LPS")
    geometry = Geometry((4, 5, 6), (2.5, 0.7, 0.9), (10.0, -20.0, 30.0), tuple(float(v) for v in DIRECTIONS[name]))
    canon, canon_geometry, _ = to_canonical(array, geometry)
    np.testing.assert_array_equal(canon, sitk.GetArrayFromImage(reoriented))
    np.testing.assert_allclose(canon_geometry.origin_mm, reoriented.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(canon_geometry.direction, reoriented.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(canon_geometry.spacing_mm[::-1], reoriented.GetSpacing(), atol=1e-9)


def test_geometry_rejects_bad_values():
    with pytest.raises(ValueError, match="spacing"):
        Geometry((2, 2, 2), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="direction"):
        Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0))
