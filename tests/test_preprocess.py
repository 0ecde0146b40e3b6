"""The paper's preprocessing: intensity, valid grids, spacing growth, box + margin, and the one inverse."""

import numpy as np
import pytest
from conftest import shared_file

from flare_seg.config import GridConfig, IntensityConfig, LocPreprocessConfig, SegPreprocessConfig
from flare_seg.evaluation import metrics
from flare_seg.geometry import Geometry, to_canonical
from flare_seg.preprocess import (
    GridRecord,
    _block_average,
    bounding_box,
    box_in_input,
    choose_grid,
    clamp_padding,
    largest_component,
    loc_input,
    one_hot,
    resample_to_grid,
    scale_intensity,
    seg_input,
    seg_record,
    to_input_grid,
)

LOC = LocPreprocessConfig()
SEG = SegPreprocessConfig()


def test_intensity_scaling_and_clipping_never_modify_input():
    hu = np.array([-3000, -1024, 0, 1024, 2048, 5000], dtype=np.int16)
    out = scale_intensity(hu, IntensityConfig())
    np.testing.assert_allclose(out, [-1, -0.5, 0, 0.5, 1, 1])
    assert out.dtype == np.float32 and hu[0] == -3000
    assert clamp_padding(hu)[0] == -1024 and hu[0] == -3000
    same = np.zeros(3, np.int16)
    assert clamp_padding(same) is same


@pytest.mark.parametrize("extent_mm,expected_size,expected_spacing", [
    ((100, 100, 100), (32, 32, 32), 6.0),           # small: the minimum size
    ((600, 400, 400), (112, 80, 80), 6.0),          # 600/6 = 100 -> 112 (multiple of 16)
    ((1200, 400, 400), (208, 80, 80), 6.0),          # 200 -> 208
    ((2000, 400, 400), (256, 64, 64), 2000 / 256),   # z too long: spacing grows (isotropically)
    ((300, 600, 480), (48, 80, 64), 7.5),            # in-plane too wide: 600/80
])
def test_localizer_grid_sizes_and_spacing_growth(extent_mm, expected_size, expected_spacing):
    size, spacing = choose_grid(extent_mm, LOC.grid)
    assert size == expected_size and spacing == pytest.approx(expected_spacing)
    assert all(s % 16 == 0 for s in size)
    assert all(n <= s * spacing + 1e-6 for n, s in zip(extent_mm, size, strict=True))


def test_segmenter_grid_sizes_are_multiples_of_32_within_limits():
    for extent in [(10, 10, 10), (200, 150, 250), (320, 256, 320), (500, 200, 300)]:
        size, spacing = choose_grid(extent, SEG.grid)
        assert all(s % 32 == 0 and 32 <= s <= m for s, m in zip(size, (160, 128, 160), strict=True))
        assert spacing >= 2.0 and all(e <= s * spacing + 1e-6 for e, s in zip(extent, size, strict=True))
    assert choose_grid((500, 200, 300), SEG.grid)[1] == pytest.approx(500 / 160)


def test_block_average_exact_values_and_partial_blocks():
    a = np.arange(2 * 5 * 7, dtype=np.int16).reshape(2, 5, 7)
    out = _block_average(a, (1, 2, 3))
    assert out.shape == (2, 3, 3)
    assert out[0, 0, 0] == pytest.approx(np.mean(a[0, 0:2, 0:3]))
    assert out[1, 2, 2] == pytest.approx(np.mean(a[1, 4:5, 6:7]))  # partial block: its own voxels


def test_loc_input_covers_whole_image_centred_at_6mm():
    hu = np.full((40, 120, 100), -1000, dtype=np.int16)
    hu[10:30, 40:80, 30:70] = 40  # a soft-tissue block
    x, record = loc_input(hu, (5.0, 0.8, 0.8), LOC)
    assert x.shape == (48, 32, 32) and record.spacing_mm == (6.0, 6.0, 6.0)
    assert x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    centre_out = (np.asarray(x.shape) - 1) / 2
    np.testing.assert_allclose(np.asarray(record.start) + centre_out * np.asarray(record.step),
                               (np.asarray(hu.shape) - 1) / 2)
    assert x[0, 0, 0] == pytest.approx(-1024 / 2048)  # padding outside the image
    inside = x[tuple(int(round(c)) for c in centre_out)]
    assert inside == pytest.approx(40 / 2048, abs=2e-3)


def test_seg_record_margin_is_clipped_to_the_image():
    shape, spacing = (100, 200, 200), (2.5, 0.8, 0.8)
    box = ((50, 100, 100), (60, 120, 130))
    record = seg_record(box, shape, spacing, SEG)
    assert record.spacing_mm == (2.0, 2.0, 2.0)
    # box 11 slices * 2.5 = 27.5 mm + 2 * 32 mm margin -> 91.5 mm -> 46 voxels -> 64
    assert record.output_shape[0] == 64
    edge = seg_record(((0, 0, 0), (10, 10, 10)), shape, spacing, SEG)
    lo = np.asarray(edge.footprint())[:, 0]
    assert np.all(lo == 0)  # clipped at the image border, grid centred on the clipped box
    x, rec = seg_input(np.zeros(shape, np.int16), spacing, box, SEG)
    assert x.shape == rec.output_shape


def test_box_from_mask_maps_grid_voxels_to_input_voxels():
    record = GridRecord((100, 100, 100), (10, 10, 10), (10.0,) * 3, (4.5, 4.5, 4.5), (10.0, 10.0, 10.0))
    mask = np.zeros((10, 10, 10), bool)
    mask[2:4, 5, 5:7] = True
    box = box_in_input(mask, record)
    assert box == ((20, 50, 50), (39, 59, 69))
    assert box_in_input(np.zeros((10, 10, 10), bool), record) is None


def test_largest_component_option():
    mask = np.zeros((10, 10, 10), bool)
    mask[1:3, 1:3, 1:3] = True
    mask[5:9, 5:9, 5:9] = True
    kept = largest_component(mask)
    assert kept.sum() == 64 and not kept[1, 1, 1]
    assert bounding_box(kept) == ((5, 5, 5), (8, 8, 8))


def test_to_input_grid_identity_record_and_outside_is_background():
    labels = np.random.default_rng(0).integers(0, 5, size=(8, 8, 8)).astype(np.uint8)
    record = GridRecord((8, 8, 8), (8, 8, 8), (1.0,) * 3, (0.0,) * 3, (1.0,) * 3)
    for mode in ("linear", "nearest"):
        np.testing.assert_array_equal(to_input_grid(one_hot(labels, 5), record, mode=mode), labels)
    np.testing.assert_array_equal(to_input_grid(labels, record), labels)
    shifted = GridRecord((12, 8, 8), (8, 8, 8), (1.0,) * 3, (4.0, 0.0, 0.0), (1.0,) * 3)
    out = to_input_grid(one_hot(labels, 5), shifted)
    assert np.all(out[:4] == 0)
    np.testing.assert_array_equal(out[4:], labels)


def _oracle_dsc(labels, spacing, mode):
    """GT one-hot pushed to the 2 mm grid (linear) and back with ``to_input_grid``."""
    box = bounding_box(labels > 0)
    record = seg_record(box, labels.shape, spacing, SEG)
    soft = np.stack([resample_to_grid(one_hot(labels, 5)[..., k], record, order=1, cval=float(k == 0))
                     for k in range(5)], -1)
    return metrics.dice_per_label(to_input_grid(soft, record, mode=mode), labels)


def test_oracle_round_trip_on_real_anatomy_meets_thresholds():
    pytest.importorskip("SimpleITK")
    from flare_seg import io

    labels, geometry, _ = io.read_image(shared_file("amos_label_map/labels_flare_manual.nii.gz"))
    canon, canon_geometry, _ = to_canonical(labels, geometry)
    dsc = _oracle_dsc(np.ascontiguousarray(canon), canon_geometry.spacing_mm, "linear")
    assert dsc["liver"] >= 0.98 and dsc["kidney"] >= 0.96 and dsc["spleen"] >= 0.97 and dsc["pancreas"] >= 0.93
    nearest = _oracle_dsc(np.ascontiguousarray(canon), canon_geometry.spacing_mm, "nearest")
    assert all(dsc[k] >= nearest[k] for k in dsc)  # why linear is the default


def test_oracle_round_trip_on_an_oblique_anisotropic_phantom():
    from flare_seg.geometry import rotation_direction
    from flare_seg.synth import phantom

    rng = np.random.default_rng(7)
    ct, labels = phantom.make_phantom(rng, shape_zyx=(60, 160, 160), spacing_mm=(4.0, 2.2, 2.2))
    geometry = Geometry(labels.shape, (4.0, 2.2, 2.2), (0.0, 0.0, 0.0), rotation_direction((0.2, -0.1, 0.3)))
    canon, canon_geometry, _ = to_canonical(labels, geometry)
    dsc = _oracle_dsc(np.ascontiguousarray(canon), canon_geometry.spacing_mm, "linear")
    assert dsc["liver"] >= 0.98 and dsc["kidney"] >= 0.96 and dsc["spleen"] >= 0.97 and dsc["pancreas"] >= 0.93


def test_grid_config_validates_multiples():
    with pytest.raises(ValueError, match="multiples"):
        GridConfig(2.0, (30, 32, 32), (160, 128, 160), 32)
