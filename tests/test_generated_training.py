"""Generated training samples and the real-CT selection signal (no TensorFlow needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flare_seg import labels as flare_labels
from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig
from flare_seg.synth.domain_rand import DomainRandConfig
from flare_seg.synth.label_maps import phantom_label_map
from flare_seg.training import real_val
from flare_seg.training.generated import GeneratedPool

TRAIN = TrainConfig(seed=5, train_size_zyx=(32, 32, 32))


@pytest.fixture(scope="module")
def pool():
    lm = phantom_label_map(np.random.default_rng(0), "p0", (40, 48, 48), (6.0, 6.0, 6.0))
    return GeneratedPool([lm], DomainRandConfig(work_spacing_mm=4.0, organ_margin_mm=30.0))


def test_generated_samples_reproducible_per_index_and_fresh_per_index(pool):
    sampler = pool.make_sampler(SegmenterConfig(), TRAIN)
    x1, y1 = sampler.sample(7)
    x2, y2 = sampler.sample(7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (32, 32, 32) and y1.shape == (32, 32, 32, 5)
    assert not np.array_equal(sampler.case(7).image_hu, sampler.case(8).image_hu)  # a new body per sample
    case = sampler.case(7)
    assert case.labels.shape == case.image_hu.shape and case.labels.max() <= 4


def test_generated_localizer_samples(pool):
    x, y = pool.make_sampler(LocalizerConfig(), TrainConfig(seed=1)).sample(0)
    assert y.shape[-1] == 2 and x.shape == y.shape[:-1]


def test_cached_cases_mixed_in(pool):
    from flare_seg.training.data import TrainCase

    labels = np.zeros((20, 24, 24), np.uint8)
    labels[5:15, 6:18, 6:18] = flare_labels.LIVER
    cached = TrainCase("cached", np.full(labels.shape, 60, np.int16), labels, (4.0, 4.0, 4.0))
    mixed = GeneratedPool(pool.maps, pool.config, [cached], 0.5).make_sampler(SegmenterConfig(), TRAIN)
    ids = [mixed.case(i).case_id for i in range(20)]
    assert 3 < ids.count("cached") < 17


def test_selection_score_rule():
    phantom_only = {"step": 1, "val_dsc_liver": 0.9, "val_dsc_spleen": 0.7}
    assert real_val.selection_score(phantom_only) == pytest.approx(0.8)
    assert real_val.selection_score({"step": 1, "loss": 0.3}) is None
    row = {**phantom_only, "real_dsc_amos_liver": 0.6, "real_dsc_amos_spleen": 0.4, "real_fp_ml_chest": 20.0,
           "real_fp_ml_head": 10.0}
    assert real_val.selection_score(row) == pytest.approx(0.5 + 0.25 * 0.8 - 0.3)
    worse_real = {**row, "real_dsc_amos_spleen": 0.2, "val_dsc_spleen": 0.95}  # phantoms up, real CT down
    assert real_val.selection_score(worse_real) < real_val.selection_score(row)
    flood = {**row, "real_fp_ml_chest": 5000.0}
    assert real_val.selection_score(flood) == pytest.approx(0.5 + 0.2 - 0.5)


class _Model:
    """Predicts the label map it was given (perfect) or all liver (wrong), on the network grid."""

    def __init__(self, name, wrong=False):
        self.name, self.wrong = name, wrong
        self.truth = None

    def predict_on_batch(self, x):
        probs = np.zeros(x.shape[1:4] + (self.channels,), np.float32)
        probs[..., 1 if self.wrong else 0] = 1.0
        if not self.wrong and self.truth is not None:
            probs[:] = self.truth
        return {self.name: probs[None]}


def test_real_case_scores_dsc_and_false_positive_ml(tmp_path, monkeypatch):
    labels = np.zeros((24, 40, 40), np.uint8)
    labels[6:18, 10:30, 8:20] = flare_labels.LIVER
    labels[8:16, 12:24, 26:34] = flare_labels.SPLEEN
    from flare_seg.geometry import Geometry
    from flare_seg.training.data import make_case

    image = np.where(labels > 0, 100, -1000).astype(np.int16)
    image[:, 5:35, 4:38] = np.maximum(image[:, 5:35, 4:38], 0)
    case = make_case("toy", image, labels, Geometry(labels.shape, (4.0, 4.0, 4.0)))
    cfg = SegmenterConfig()
    train = TrainConfig(train_size_zyx=(32, 32, 32))
    sampler = real_val._sampler(cfg, train, case)
    _, y = sampler.sample(0, augment_data=False)
    perfect = _Model("prob")
    perfect.channels, perfect.truth = 5, y
    scores = real_val.score_case(perfect, cfg, train, real_val.RealCase("toy", case, (1, 3)))
    assert scores == {"real_dsc_toy_liver": pytest.approx(1.0), "real_dsc_toy_spleen": pytest.approx(1.0)}
    wrong = _Model("prob", wrong=True)
    wrong.channels = 5
    negative = real_val.RealCase("neg", make_case("neg", image, np.zeros_like(labels), Geometry(labels.shape,
                                                                                                (4.0, 4.0, 4.0))), ())
    fp = real_val.score_case(wrong, cfg, train, negative)["real_fp_ml_neg"]
    n = np.prod(real_val._sampler(cfg, train, negative.case).base_record(0).output_shape)
    assert fp == pytest.approx(n * 8.0 / 1000.0)  # every 2 mm voxel called liver
    json_path = tmp_path / "real.json"
    json_path.write_text(json.dumps({"root": ".", "cases": [{"name": "x", "image": "missing.nii.gz"}]}))
    with pytest.raises((ValueError, FileNotFoundError), match="missing"):
        real_val.load_real_cases(json_path)


def _thin_liver_case():
    """A 3 mm-thick liver (1 mm slices) whose slices lie between the centres of 6 mm cells."""
    from flare_seg.geometry import Geometry
    from flare_seg.training.data import make_case

    labels = np.zeros((9, 120, 120), np.uint8)
    labels[3:6, 30:90, 20:80] = flare_labels.LIVER  # the 6 mm cells are centred on slices 1 and 7
    image = np.where(labels > 0, 100, -50).astype(np.int16)
    return make_case("dome", image, labels, Geometry(labels.shape, (1.0, 2.0, 2.0)))


def test_localizer_target_marks_every_cell_an_organ_touches():
    from flare_seg.config import LocalizerConfig
    from flare_seg.training import augment
    from flare_seg.training.data import LocSampler, cell_labels

    case = _thin_liver_case()
    sampler = LocSampler([case], TrainConfig(), LocalizerConfig().preprocess)
    record = sampler.base_record(0)
    coords = augment.sample_coordinates(record, case.spacing_mm, augment.SpatialTransform.identity())
    centre_only = augment.warp(case.labels, coords, order=0, cval=0)
    assert not centre_only.any()  # sampled at cell centres the 3 mm liver is gone
    _, y = sampler.sample(0, augment_data=False)
    fg = y[..., 1] > 0.5
    per_slice = fg.sum(axis=(1, 2))
    assert (per_slice > 0).sum() == 2  # the two 6 mm cells whose boundary the liver straddles
    # in-plane the cells cover the liver's 120 x 120 mm and no more than one cell beyond each side
    area = per_slice.max() * np.prod(record.spacing_mm[1:])
    assert 120 * 120 <= area <= 132 * 132
    assert cell_labels(case.labels, case.spacing_mm, case.spacing_mm)[0] is case.labels  # 1-voxel cells: unchanged

    # a 3-slice CT (the shared liver dome) lies between two cell centres, both outside the image
    from flare_seg.geometry import Geometry
    from flare_seg.training.data import make_case

    dome = make_case("dome3", case.image_hu[3:6], case.labels[3:6], Geometry((3, 120, 120), (1.0, 2.0, 2.0)))
    sampler = LocSampler([dome], TrainConfig(), LocalizerConfig().preprocess)
    record = sampler.base_record(0)
    centres = record.start[0] + record.step[0] * np.arange(record.output_shape[0])
    assert not np.any((centres >= -0.5) & (centres <= 2.5))
    _, y = sampler.sample(0, augment_data=False)
    assert (y[..., 1] > 0.5).sum(axis=(1, 2)).astype(bool).sum() == 2


def test_localizer_real_case_scores_the_pipeline_box_recall():
    from flare_seg.config import LocalizerConfig

    case = _thin_liver_case()
    cfg = LocalizerConfig()
    train = TrainConfig()
    real = real_val.RealCase("dome", case, (1,))
    _, y = real_val._sampler(cfg, train, case).sample(0, augment_data=False)
    perfect = _Model("logits")
    perfect.channels, perfect.truth = 2, y
    scores = real_val.score_case(perfect, cfg, train, real)
    assert scores == {"real_box_recall_dome": pytest.approx(1.0), "real_dsc_dome_foreground": pytest.approx(1.0)}
    half = y.copy()
    half[:, :, half.shape[2] // 2:] = (1.0, 0.0)  # the right half of the grid called background
    cut = _Model("logits")
    cut.channels, cut.truth = 2, half
    recall = real_val.score_case(cut, cfg, train, real)["real_box_recall_dome"]
    assert 0.0 < recall < 1.0
    nothing = _Model("logits")
    nothing.channels = 2  # all background
    assert real_val.score_case(nothing, cfg, train, real)["real_box_recall_dome"] == 0.0
    row = {"step": 1, "real_box_recall_dome": 0.5, "real_dsc_dome_foreground": 0.7}
    assert real_val.selection_score(row) == pytest.approx(0.6)
