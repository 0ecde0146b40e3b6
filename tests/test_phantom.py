"""Tests of the synthetic CT phantom (:mod:`flare_seg.synth.phantom`): tiny volumes, NumPy/SciPy only."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED_DATA, SHARED_DATA, shared_file
from scipy import ndimage as ndi

from flare_seg import labels as flare_labels
from flare_seg.synth import phantom

_AMOS = Path("amos_label_map") / "amos_0013_label_original.nii.gz"
AMOS_MAP = next((root / _AMOS for root in (BUNDLED_DATA, SHARED_DATA) if (root / _AMOS).exists()), SHARED_DATA / _AMOS)
REPO = Path(__file__).resolve().parents[1]

SHAPE, SPACING = (48, 64, 64), (6.0, 6.0, 6.0)  # 288 x 384 x 384 mm: the whole abdomen
PORTAL_VENOUS = phantom.PhantomConfig(phase_weights=(("portal_venous", 1.0),))


def _make(seed, shape=SHAPE, spacing=SPACING, **kw):
    return phantom.make_phantom(np.random.default_rng(seed), shape, spacing, **kw)


def _volumes_ml(labels, spacing):
    return np.bincount(labels.ravel(), minlength=5)[1:] * float(np.prod(spacing)) / 1000.0


def _centroid(labels, value):
    return np.argwhere(labels == value).mean(axis=0)


@pytest.fixture(scope="module")
def small():
    return _make(0)


def test_dtypes_shapes_and_label_values(small):
    ct, labels = small
    assert ct.dtype == np.int16 and labels.dtype == np.uint8
    assert ct.shape == labels.shape == SHAPE
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 3, 4}
    assert -1024 <= ct.min() and ct.max() <= 3071


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_all_organs_present_with_plausible_volumes(seed):
    liver, kidneys, spleen, pancreas = _volumes_ml(_make(seed)[1], SPACING)
    assert 700 < liver < 2500
    assert 150 < kidneys < 500  # both kidneys
    assert 50 < spleen < 450
    assert 20 < pancreas < 150


def test_anatomical_sidedness(small):
    _, labels = small
    liver, kidney, spleen, pancreas = (_centroid(labels, k) for k in flare_labels.ORGANS)
    mid_x = (SHAPE[2] - 1) / 2
    # (z, y, x) canonical LPS: x grows to the patient's left, y posterior, z superior.
    assert liver[2] < mid_x < spleen[2]
    assert liver[2] + 15 < spleen[2]  # at least 90 mm apart
    assert kidney[1] > pancreas[1] + 2  # kidneys at least 12 mm posterior to the pancreas
    assert spleen[1] > pancreas[1]
    liver_top = np.argwhere(labels == flare_labels.LIVER)[:, 0].max()
    assert liver_top > kidney[0] + 10  # liver dome 60+ mm above the kidneys' centre
    assert liver[0] > kidney[0]
    kidney_x = np.argwhere(labels == flare_labels.KIDNEY)[:, 2]
    assert (kidney_x < mid_x - 3).sum() > 50 and (kidney_x > mid_x + 3).sum() > 50  # both sides


def test_air_outside_body_and_tissue_classes(small):
    ct, labels = small
    corners = np.concatenate([ct[:, :3, :3].ravel(), ct[:, -3:, -3:].ravel(), ct[:, :3, -3:].ravel()])
    assert abs(float(corners.mean()) + 1000) < 15
    body = ct[SHAPE[0] // 2]
    assert ((body > -130) & (body < -60)).sum() > 200  # fat
    assert ((body > 30) & (body < 80) & (labels[SHAPE[0] // 2] == 0)).sum() > 100  # muscle etc.
    assert (ct > 500).sum() > 100  # bone


def test_deterministic_and_seed_dependent():
    ct_a, lab_a = _make(5)
    ct_b, lab_b = _make(5)
    np.testing.assert_array_equal(ct_a, ct_b)
    np.testing.assert_array_equal(lab_a, lab_b)
    ct_c, lab_c = _make(6)
    assert (lab_a != lab_c).mean() > 0.005
    assert not np.array_equal(ct_a, ct_c)


def test_global_numpy_random_state_untouched():
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    _make(0, shape=(8, 16, 16), spacing=(10.0, 20.0, 20.0))
    np.testing.assert_array_equal(before, np.random.get_state()[1])


def test_same_body_at_two_spacings():
    coarse, fine = (48, 64, 64), (72, 96, 96)
    spacing_fine = (4.0, 4.0, 4.0)
    lab_a, lab_b = _make(3, coarse, SPACING)[1], _make(3, fine, spacing_fine)[1]
    vol_a, vol_b = _volumes_ml(lab_a, SPACING), _volumes_ml(lab_b, spacing_fine)
    np.testing.assert_allclose(vol_a, vol_b, rtol=0.15)
    for k in flare_labels.ORGANS:  # centroids in FOV-centred mm agree within 5 mm
        ca = (_centroid(lab_a, k) - (np.array(coarse) - 1) / 2) * SPACING
        cb = (_centroid(lab_b, k) - (np.array(fine) - 1) / 2) * spacing_fine
        assert np.abs(ca - cb).max() < 5.0, (k, ca, cb)


def _real_slab_mean_hu():
    """Mean HU inside liver, spleen and pancreas of the real portal-venous slab, measured from the CT."""
    ct_path = shared_file("upper_abdomen_slab/ct.nii.gz")
    lab_path = shared_file("upper_abdomen_slab/labels_flare_pseudo.nii.gz")
    from flare_seg import io

    ct, labels = io.read_ct(ct_path).array, io.read_image(lab_path)[0]
    return phantom.organ_mean_hu(ct.astype(np.float32), labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_portal_venous_mean_hu_close_to_the_measured_real_slab(seed):
    real = _real_slab_mean_hu()  # measured from the real CT here, not a constant of the phantom module
    ct, labels = _make(seed, config=PORTAL_VENOUS)
    means = phantom.organ_mean_hu(ct, labels)
    for organ in ("liver", "spleen", "pancreas"):
        assert abs(means[organ] - real[organ]) <= 25.0, (organ, means[organ], real[organ])
    assert 120 < means["kidney"] < 220


#: sha256 of (ct, labels) bytes recorded on the one-file phantom.py before it was split into modules
#: (commit c989aab). Exact float arithmetic pins them to this NumPy/SciPy build and an x86-64 CPU.
PINNED_SHA256 = {
    "make_0": "24a2e26a18f0e1110856a82f4cd237b1d3d0d07439fc249f077b16d050124ba9",
    "make_1": "a409868982f6dcbdc4e3eec1db9e6f4b89f0f2da92010b6f4f198e03804c02c3",
    "make_7": "7eb8307c2852d77a4f0c4bf12b8990f89613f7471fba0111fbf1f6440f5c5d80",
    "make_3_fov": "86433e5aff3174339a4ba5487235f055bb6f9c6c7c4e322ab55911f41c62c362",
    "label_map_amos_0": "166f19a319999a4e8faf6b67433b1daabcdd231361cf69e65195aa9921240ba5",
    "label_map_amos_4": "be75dbb7d8423d88e132f517c012fcc1fafe126bfeffc97d2614bcf97e0069cb",
    "label_map_flare_1": "4f971a29d4e9da950d46a3ee1dcafe1ebef661b2b7c45f359d915d822ec91c46",
}


def _sha256(*arrays):
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def test_same_seed_same_ct_hash_as_before_the_split():
    rng = np.random.default_rng
    got = {f"make_{s}": _sha256(*_make(s)) for s in (0, 1, 7)}
    got["make_3_fov"] = _sha256(*_make(3, (40, 96, 96), (2.5, 3.5, 3.5), field_of_view_shift_mm=(60.0, 10.0, -5.0)))
    for s in (0, 4):
        got[f"label_map_amos_{s}"] = _sha256(*phantom.phantom_from_label_map(rng(s), _toy_amos_map(), (6.0, 7.0, 7.0)))
    flare = flare_labels.map_labels(_toy_amos_map(), "amos")
    got["label_map_flare_1"] = _sha256(*phantom.phantom_from_label_map(rng(1), flare, (6.0, 7.0, 7.0), "flare"))
    assert got == PINNED_SHA256


def test_contrast_phase_changes_enhancement():
    arterial = phantom.PhantomConfig(phase_weights=(("arterial", 1.0),))
    plain = phantom.PhantomConfig(phase_weights=(("non_contrast", 1.0),))
    m_art = phantom.organ_mean_hu(*_make(2, config=arterial))
    m_nc = phantom.organ_mean_hu(*_make(2, config=plain))
    assert m_art["kidney"] > m_nc["kidney"] + 80
    assert m_art["spleen"] > m_nc["spleen"] + 30
    with pytest.raises(ValueError, match="phase"):
        _make(0, config=phantom.PhantomConfig(phase_weights=(("venous", 1.0),)))


def test_field_of_view_shift_and_thin_slabs():
    ct, labels = _make(0, shape=(20, 64, 64), field_of_view_shift_mm=(230.0, 0.0, 0.0))  # chest
    counts = np.bincount(labels.ravel(), minlength=5)
    assert counts[flare_labels.KIDNEY] == 0 and counts[flare_labels.PANCREAS] == 0
    assert ((ct > -950) & (ct < -700)).mean() > 0.05  # lungs
    ct, labels = _make(0, shape=(3, 96, 96), spacing=(2.0, 4.0, 4.0), field_of_view_shift_mm=(40.0, 0, 0))
    assert ct.shape == (3, 96, 96) and (labels == flare_labels.LIVER).sum() > 100
    ct, labels = _make(0, shape=(6, 8, 8), field_of_view_shift_mm=(0.0, 1000.0, 0.0))  # beside the body
    assert labels.max() == 0 and ct.max() < -900


def test_organ_mean_hu():
    labels = np.array([[[0, 1, 1, 3]]], np.uint8)
    ct = np.array([[[-1000, 80, 100, 70]]], np.int16)
    assert phantom.organ_mean_hu(ct, labels) == {"liver": 90.0, "spleen": 70.0}
    with pytest.raises(ValueError):
        phantom.organ_mean_hu(ct, labels[..., :2])


def _toy_amos_map():
    m = np.zeros((20, 48, 48), np.uint8)
    m[6:17, 12:34, 4:22] = 6  # liver, patient's right (low x)
    m[8:15, 20:34, 30:40] = 1  # spleen
    m[3:10, 28:36, 10:16] = 2  # right kidney
    m[4:11, 28:36, 32:38] = 3  # left kidney
    m[6:9, 18:22, 18:32] = 10  # pancreas
    m[4:18, 22:26, 23:26] = 8  # aorta
    m[10:14, 12:18, 24:32] = 7  # stomach
    return m


def test_label_map_mode_synthetic_amos():
    m, spacing = _toy_amos_map(), (6.0, 7.0, 7.0)
    ct, labels = phantom.phantom_from_label_map(np.random.default_rng(0), m, spacing)
    assert ct.dtype == np.int16 and labels.dtype == np.uint8 and ct.shape == labels.shape == m.shape
    np.testing.assert_array_equal(labels, flare_labels.map_labels(m, "amos"))
    assert abs(float(ct[:, :2, :2].mean()) + 1000) < 20  # air outside the synthesized body
    outside = (m == 0) & (ct > -950)
    assert outside.sum() > 2000  # a body (fat, muscle, bone) around the organs
    means = [phantom.organ_mean_hu(*phantom.phantom_from_label_map(np.random.default_rng(s), m, spacing))
             for s in range(4)]
    livers = [mm["liver"] for mm in means]
    assert max(livers) - min(livers) > 20  # intensities are randomized per draw
    for mm in means:
        assert all(-120 < v < 380 for v in mm.values())


def test_label_map_mode_flare_source_and_errors():
    flare = flare_labels.map_labels(_toy_amos_map(), "amos")
    ct, labels = phantom.phantom_from_label_map(np.random.default_rng(1), flare, (6.0, 7.0, 7.0), "flare")
    np.testing.assert_array_equal(labels, flare)
    with pytest.raises(ValueError):
        phantom.phantom_from_label_map(np.random.default_rng(1), flare + 5, (6.0, 7.0, 7.0), "flare")
    with pytest.raises(ValueError):
        phantom.phantom_from_label_map(np.random.default_rng(1), flare, (6.0, 7.0, 7.0), "totalseg")
    empty = np.zeros((4, 16, 16), np.uint8)
    ct, labels = phantom.phantom_from_label_map(np.random.default_rng(1), empty, (10.0, 20.0, 20.0))
    assert labels.max() == 0 and ct.shape == empty.shape


def test_label_map_mode_real_amos_map():
    if not AMOS_MAP.exists():
        pytest.skip(f"real AMOS label map not found at {AMOS_MAP} (shared test data absent)")
    sitk = pytest.importorskip("SimpleITK")
    from flare_seg.geometry import Geometry, to_canonical

    img = sitk.ReadImage(str(AMOS_MAP))
    arr = sitk.GetArrayFromImage(img)
    geo = Geometry(arr.shape, tuple(img.GetSpacing())[::-1], tuple(img.GetOrigin()), tuple(img.GetDirection()))
    canon, geo_c, _ = to_canonical(arr, geo)
    small = np.ascontiguousarray(canon[:, ::4, ::4])
    spacing = (geo_c.spacing_mm[0], geo_c.spacing_mm[1] * 4, geo_c.spacing_mm[2] * 4)
    ct, labels = phantom.phantom_from_label_map(np.random.default_rng(0), small, spacing, "amos")
    np.testing.assert_array_equal(labels, flare_labels.map_labels(small, "amos"))
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    # The synthesized body encloses the organs: the ring around them is (filled) body, not outside air.
    body = np.stack([ndi.binary_fill_holes(s > -500) for s in ct])
    organs = labels > 0
    ring = ndi.binary_dilation(organs, iterations=2) & ~organs
    assert (ring & ~body).sum() < 0.01 * ring.sum()
    assert abs(float(ct[:, :3, :3].mean()) + 1000) < 20


def test_importable_without_tensorflow_keras_simpleitk():
    code = (
        "import sys; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
        "sys.modules['SimpleITK'] = None\n"
        "import numpy as np, flare_seg.synth.phantom as p\n"
        "ct, lab = p.make_phantom(np.random.default_rng(0), (8, 16, 16), (12.0, 24.0, 24.0))\n"
        "m = np.zeros((8, 16, 16), np.uint8); m[2:6, 4:10, 3:8] = 6\n"
        "ct2, lab2 = p.phantom_from_label_map(np.random.default_rng(0), m, (10.0, 20.0, 20.0))\n"
        "assert ct.dtype == np.int16 and int(lab2.max()) == 1\n"
        "bad = [n for n in ('tensorflow', 'keras', 'SimpleITK') if sys.modules.get(n) is not None]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
