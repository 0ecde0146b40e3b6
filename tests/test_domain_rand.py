"""Tests of the domain-randomised generator (:mod:`flare_seg.synth.domain_rand`): NumPy/SciPy only."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flare_seg import labels as flare_labels
from flare_seg.synth import domain_rand, label_maps

#: Every appearance and imaging step off: the image is exactly the per-label means.
QUIET = domain_rand.DomainRandConfig(
    work_spacing_mm=4.0, rotation_deg=0.0, scale=(1.0, 1.0), shear=0.0, elastic_mm=(0.0, 0.0), fov_probability=0.0,
    realistic_probability=0.0, realistic_air_probability=0.0, spread_hu=(0.0, 0.0), lookalike_probability=0.0,
    lesion_probability=0.0, slice_thickness_mm=(0.5, 0.5), in_plane_mm=(0.5, 0.5), blur_voxels=(0.0, 0.0),
    noise_hu=(0.0, 0.0), bias_hu=(0.0, 0.0), gamma_probability=0.0, window_probability=0.0)


def _toy_map() -> label_maps.LabelMap:
    """Body with liver, kidney, vertebra, spleen, pancreas and bowel at 4 mm (ids 1-6)."""
    m = np.zeros((30, 40, 40), np.uint8)
    m[8:24, 8:26, 4:18] = 1  # liver
    m[4:14, 26:32, 8:14] = 2  # kidney
    m[2:28, 26:32, 18:24] = 3  # vertebra, touching the kidney
    m[10:22, 12:26, 26:36] = 4  # spleen
    m[8:12, 18:24, 18:26] = 5  # pancreas
    m[4:8, 8:24, 18:30] = 6  # bowel
    to_flare = np.array([0, flare_labels.LIVER, flare_labels.KIDNEY, 0, flare_labels.SPLEEN, flare_labels.PANCREAS, 0],
                        np.uint8)
    tissue = np.array([label_maps.TISSUES.index(t) for t in
                       ("body", "liver", "kidney", "bone", "spleen", "pancreas", "bowel")])
    return label_maps.with_body_and_air("toy", m, (4.0, 4.0, 4.0), to_flare, tissue)


def _gen(seed, cfg=QUIET, lm=None):
    return domain_rand.generate(np.random.default_rng(seed), lm or _toy_map(), cfg)


def test_deterministic_for_a_seed_and_seed_dependent():
    cfg = domain_rand.DomainRandConfig(work_spacing_mm=4.0, lesion_probability=1.0, fov_probability=0.0)
    a, b, c = _gen(3, cfg), _gen(3, cfg), _gen(4, cfg)
    np.testing.assert_array_equal(a.image_hu, b.image_hu)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.info == b.info
    assert a.labels.shape != c.labels.shape or not np.array_equal(a.image_hu, c.image_hu)


@pytest.mark.parametrize("transform", [
    dict(rotation_deg=20.0), dict(scale=(0.7, 1.3)), dict(shear=0.15), dict(elastic_mm=(10.0, 12.0)),
    dict(fov_probability=1.0, fov_weights=(1, 0, 0, 0)), dict(fov_probability=1.0, fov_weights=(0, 1, 0, 0)),
    dict(fov_probability=1.0, fov_weights=(0, 0, 1, 0)), dict(fov_probability=1.0, fov_weights=(0, 0, 0, 1)),
])
def test_image_and_labels_aligned_under_spatial_transforms(transform):
    lm = _toy_map()
    plain = _gen(0, QUIET, lm)
    for seed in range(3):
        case = _gen(seed, dataclasses.replace(QUIET, **transform), lm)
        # every voxel shows its own label's intensity, and the FLARE labels are those of the same voxel
        np.testing.assert_array_equal(case.image_hu, np.clip(case.mean_hu[case.generation], -1024, 3071))
        np.testing.assert_array_equal(case.labels, lm.to_flare[case.generation])
        moved = case.labels.shape != plain.labels.shape or (case.labels != plain.labels).mean() > 0.01
        assert moved, (transform, seed)  # the transform really changed the sample


def _correlation(a, b, axis, shift):
    """Correlation of ``a`` with ``b`` shifted by ``shift`` voxels along ``axis`` (interior only)."""
    b = np.roll(b, shift, axis=axis)
    inner = tuple(slice(2, -2) for _ in range(3))
    a, b = a[inner] - a[inner].mean(), b[inner] - b[inner].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_image_and_labels_aligned_under_blur_and_thick_slices():
    lm = _toy_map()
    cfg = dataclasses.replace(QUIET, slice_thickness_mm=(7.0, 7.0), in_plane_mm=(1.5, 1.5), blur_voxels=(0.6, 0.6),
                              elastic_mm=(6.0, 8.0), rotation_deg=10.0)
    for seed in range(3):
        case = _gen(seed, cfg, lm)
        sharp = np.clip(case.mean_hu[case.generation], -1024, 3071)  # the labels' own image
        assert not np.array_equal(case.image_hu, sharp)  # blurred and resampled through 7 mm slices
        assert case.info["slice_thickness_mm"] == pytest.approx(7.0)
        for axis in range(3):  # the blurred image lines up best with the labels' image at zero shift
            at_zero = _correlation(case.image_hu, sharp, axis, 0)
            assert at_zero > max(_correlation(case.image_hu, sharp, axis, s) for s in (-1, 1)), (seed, axis)


def test_lesions_only_inside_organs_and_labels_unchanged():
    lm = _toy_map()
    case = _gen(1, dataclasses.replace(QUIET, lesion_probability=1.0, max_lesions=3), lm)
    changed = case.image_hu != np.clip(case.mean_hu[case.generation], -1024, 3071)
    assert case.info["lesions"] >= 1 and changed.sum() > 10
    assert (case.labels[changed] > 0).all()
    np.testing.assert_array_equal(case.labels, lm.to_flare[case.generation])


def test_lookalike_pairs_overlap_and_random_intensities_span_the_ct_range():
    lm = _toy_map()
    cfg = dataclasses.replace(QUIET, lookalike_probability=1.0, lookalike_sd_hu=10.0)
    spread = []
    for seed in range(20):
        m = _gen(seed, cfg, lm).mean_hu
        assert abs(m[4] - m[1]) < 60 and abs(m[3] - m[2]) < 60 and abs(m[6] - m[5]) < 60  # spleen~liver etc.
        spread.append(m[1])
    assert max(spread) - min(spread) > 1000  # organ intensity is not tied to the organ
    unpaired = [_gen(s, QUIET, lm).mean_hu for s in range(20)]
    assert np.mean([abs(m[4] - m[1]) for m in unpaired]) > 200


def test_realistic_share_and_window():
    lm = _toy_map()
    real = _gen(2, dataclasses.replace(QUIET, realistic_probability=1.0), lm)
    liver = real.mean_hu[1]
    assert label_maps.TISSUE_HU["liver"][0] <= liver <= label_maps.TISSUE_HU["liver"][1]
    windowed = _gen(2, dataclasses.replace(QUIET, window_probability=1.0), lm)
    assert windowed.info["windowed"] and windowed.image_hu.min() >= -160 and windowed.image_hu.max() <= 240


def test_bundled_maps_every_structure_a_label_and_organs_mapped():
    maps = {m.name: m for m in label_maps.bundled_label_maps()}
    assert {f"totalseg_s{n}" for n in ("0001", "0004", "0006", "0011", "0327", "0328")} <= set(maps)
    assert "amos_0013" in maps and not any("0018" in n for n in maps)  # amos_0018 selects checkpoints
    ts = maps["totalseg_s0004"]
    assert ts.num_labels == 120 and len(np.unique(ts.labels)) > 100  # 117 structures + background, body, air
    assert set(np.unique(ts.to_flare[ts.labels]).tolist()) == {0, 1, 2, 3, 4}
    bone = label_maps.TISSUES.index("bone")
    names = label_maps.totalseg_names()
    assert all(ts.tissue[k] == bone for k, n in names.items() if n.startswith("vertebrae"))


def test_phantom_tissue_map_as_label_map():
    lm = label_maps.phantom_label_map(np.random.default_rng(0), "phantom0", (24, 32, 32), (12.0, 12.0, 12.0))
    assert set(np.unique(lm.to_flare[lm.labels]).tolist()) == {0, 1, 2, 3, 4}
    assert len(np.unique(lm.labels)) > 12  # fat, muscle, bones, vessels, bowel, ... are separate labels
    case = _gen(0, dataclasses.replace(QUIET, work_spacing_mm=12.0), lm)
    np.testing.assert_array_equal(case.labels, lm.to_flare[case.generation])


def _tall_map() -> label_maps.LabelMap:
    """The toy map with 20 slices of trunk (vertebra and body, no organ) above and below the organs."""
    toy = _toy_map()
    n_struct = 7  # generation labels 0-6 of _toy_map; with_body_and_air appends BODY and AIR
    m = np.pad(np.where(toy.labels < n_struct, toy.labels, 0).astype(np.uint8), ((20, 20), (0, 0), (0, 0)))
    m[:, 26:32, 18:24] = np.where(m[:, 26:32, 18:24] == 0, 3, m[:, 26:32, 18:24])  # the spine runs through
    return label_maps.with_body_and_air("tall", m, (4.0, 4.0, 4.0), toy.to_flare[:n_struct], toy.tissue[:n_struct])


def test_negative_cuts_come_from_beyond_the_organ_margin_and_hold_no_organ():
    lm = _tall_map()
    cfg = dataclasses.replace(QUIET, organ_margin_mm=8.0, negative_probability=1.0, negative_gap_mm=(4.0, 4.0))
    organ_z = np.nonzero((lm.to_flare[lm.labels] > 0).any(axis=(1, 2)))[0]
    room = max(int(organ_z[0]), lm.labels.shape[0] - 1 - int(organ_z[-1])) - 1  # one side, less the 4 mm gap
    extents = set()
    for seed in range(16):
        case = _gen(seed, cfg, lm)
        assert case.info["fov"] == "negative"
        assert not case.labels.any()  # nothing to find: the loss teaches "no organ" here
        assert (case.generation == 3).any()  # real anatomy (the spine), not empty air
        np.testing.assert_array_equal(case.image_hu, np.clip(case.mean_hu[case.generation], -1024, 3071))
        assert 4 <= case.labels.shape[0] <= room
        extents.add(case.labels.shape[0])
    assert len(extents) > 1  # the extent is drawn, not fixed
    margin_crop_z = organ_z.size + 2 * 2  # the organs' z extent + 8 mm on both sides, at 4 mm
    full = _gen(0, dataclasses.replace(cfg, negative_probability=0.0), lm)
    assert full.info["fov"] == "none" and full.labels.any() and full.labels.shape[0] <= margin_crop_z + 1
    # a map with no room beyond its organs falls back to the ordinary cuts
    toy = _toy_map()
    organs_only = label_maps.with_body_and_air("short", np.where(toy.labels < 7, toy.labels, 0)[4:24].astype(np.uint8),
                                               (4.0, 4.0, 4.0), toy.to_flare[:7], toy.tissue[:7])
    assert _gen(0, cfg, organs_only).info["fov"] != "negative"
    # the localizer (no organ margin, whole maps) draws negatives too: a CT with no organ at all
    loc = _gen(0, dataclasses.replace(cfg, organ_margin_mm=None), lm)
    assert loc.info["fov"] == "negative" and not loc.labels.any() and (loc.generation == 3).any()


def test_slab_cuts_go_down_to_one_slice():
    cfg = dataclasses.replace(QUIET, fov_probability=1.0, fov_weights=(1, 0, 0, 0), slab_mm=(2.0, 2.0))
    case = _gen(0, cfg)
    assert case.info["fov"] == "slab" and case.labels.shape[0] == 1 and case.labels.any()
    np.testing.assert_array_equal(case.image_hu, np.clip(case.mean_hu[case.generation], -1024, 3071))
    thick = [_gen(s, dataclasses.replace(cfg, slab_mm=(4.0, 60.0))).labels.shape[0] for s in range(20)]
    assert min(thick) < 4 and max(thick) > 6  # log-uniform: thin slabs are common, thick ones occur
