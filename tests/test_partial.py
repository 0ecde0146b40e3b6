"""Partially annotated training (seed 001): dataset.json, targets, re-calibrated losses by hand-worked values."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from keras import ops

from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig
from flare_seg.geometry import Geometry
from flare_seg.training import losses, objectives, partial
from flare_seg.training.data import TrainCase


def _np(x):
    return ops.convert_to_numpy(x)


def _logit(p):
    return np.log(p / (1 - p)).astype("float32")


# ----------------------------------------------------------------------------- dataset.json


def test_dataset_json_whole_folder_and_per_case(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"annotated": ["Liver", "spleen"]}))
    assert partial.read_annotations(tmp_path) == (1, 3)
    assert partial.case_annotations((1, 3), "any", tmp_path) == (1, 3)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"annotated": {"a": ["kidney"], "*": ["liver", "kidney", "spleen", "pancreas"]}}))
    found = partial.read_annotations(tmp_path)
    assert partial.case_annotations(found, "a", tmp_path) == (2,)
    assert partial.case_annotations(found, "b", tmp_path) is None  # all four annotated = fully labelled
    assert partial.read_annotations(tmp_path / "nothing") is None


def test_dataset_json_errors_name_the_file(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"annotated": ["liver", "lung"]}))
    with pytest.raises(ValueError, match=r"dataset.json.*lung"):
        partial.read_annotations(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"annotated": {"a": ["liver"]}}))
    with pytest.raises(ValueError, match=r"dataset.json: case 'b' is not in"):
        partial.case_annotations(partial.read_annotations(tmp_path), "b", tmp_path)
    (tmp_path / "dataset.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        partial.read_annotations(tmp_path)


def test_load_dataset_applies_annotations_and_folder_weights(tmp_path):
    from flare_seg.io import write_image, write_labels
    from flare_seg.training.cases import load_dataset

    geometry = Geometry((8, 8, 8), (4.0, 4.0, 4.0))
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1:3, 1:3, 1:3], labels[5:7, 5:7, 5:7] = 1, 2
    folders = []
    for name, organs, n in (("a", ["liver"], 1), ("b", ["liver", "kidney", "spleen", "pancreas"], 3)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "dataset.json").write_text(json.dumps({"annotated": organs}))
        for i in range(n):
            write_image(np.zeros((8, 8, 8), np.int16), geometry, folder / f"{name}{i}_0000.nii.gz")
            write_labels(labels, geometry, folder / f"{name}{i}.nii.gz")
        folders.append(folder)
    cases = load_dataset(folders, None, weights=(1.0, 1.0))
    assert [c.annotated for c in cases] == [(1,), None, None, None]
    assert set(np.unique(cases[0].labels)) == {0, 1}  # the unannotated kidney label is gone (unknown)
    assert set(np.unique(cases[1].labels)) == {0, 1, 2}
    assert [c.weight for c in cases] == pytest.approx([1.0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="1 weight"):
        load_dataset(folders, None, weights=(1.0,))


def test_weighted_sampling_follows_the_weights():
    from flare_seg.training.data import SegSampler

    cfg = SegmenterConfig()
    cases = [TrainCase(f"c{i}", np.zeros((4, 4, 4), np.int16), np.zeros((4, 4, 4), np.uint8), (2.0, 2.0, 2.0),
                       weight=w) for i, w in enumerate((3.0, 1.0))]
    sampler = SegSampler(cases, TrainConfig(), cfg.preprocess)
    draws = [sampler._draw_case(np.random.default_rng([0, i])) for i in range(2000)]
    assert np.mean(np.asarray(draws) == 0) == pytest.approx(0.75, abs=0.03)


# ----------------------------------------------------------------------------- targets


def test_partial_target_marks_unannotated_organs_unknown():
    labels = np.array([0, 1, 2, 3], np.uint8)
    target = partial.partial_target(labels, 5, annotated=(1,))
    np.testing.assert_array_equal(target[:, 0], [1, 0, 1, 1])  # kidney, spleen voxels: "background or unknown"
    np.testing.assert_array_equal(target[:, 1], [0, 1, 0, 0])
    np.testing.assert_array_equal(target[:, 2:], -1)
    naive = partial.partial_target(labels, 5, annotated=(1,), honour=False)
    np.testing.assert_array_equal(naive[:, 2:], 0)
    np.testing.assert_array_equal(partial.partial_target(labels, 5, None), np.eye(5, dtype="float32")[labels])


# ----------------------------------------------------------------------------- hand-worked losses


def _four_voxels():
    """Labels bg, liver, kidney over 4 voxels: liver at 0, 1; voxel 3 is a kidney nobody labelled."""
    y = np.zeros((1, 1, 1, 4, 3), "float32")
    y[..., :2, 1] = 1
    y[..., 2:, 0] = 1
    p = np.zeros_like(y)
    p[..., 0, 1] = 1   # liver found on voxel 0
    p[..., 1:3, 0] = 1  # background on voxels 1, 2
    p[..., 3, 2] = 1   # the network finds the unlabelled kidney on voxel 3
    return y, p


def test_softmax_recalibration_hand_worked_generalized_dice():
    y, p = _four_voxels()
    y_partial = y.copy()
    y_partial[..., 2] = partial.UNKNOWN
    loss = partial.dice_term(partial.recalibrate_softmax)
    # kidney's probability joins the background: bg' = [0, 1, 1, 1]; volumes bg 2, liver 2 -> weights 1/4;
    # intersections bg 2 (voxels 2, 3), liver 1; sums bg 2 + 3, liver 2 + 1
    expected = 1 - 2 * (0.25 * 2 + 0.25 * 1) / (0.25 * 5 + 0.25 * 3)
    np.testing.assert_allclose(_np(loss(y_partial, p)), [expected], rtol=1e-6)
    assert expected == pytest.approx(0.25)
    # treated as background, the same prediction costs 0.5: bg intersection 1 of 2 + 2, the absent kidney
    # (largest weight 1/4) adds its predicted voxel to the denominator
    np.testing.assert_allclose(_np(losses.generalized_dice_loss(y, p)), [1 - 2 * 0.5 / (0.25 * 8)], rtol=1e-6)


def test_an_unannotated_organ_found_by_the_network_adds_nothing_to_the_softmax_loss():
    y, p = _four_voxels()
    y[..., 2] = partial.UNKNOWN
    said_background = p.copy()
    said_background[..., 3, :] = [1, 0, 0]
    for kind in ("paper", "hybrid"):
        loss = partial.dice_term(partial.recalibrate_softmax, kind)
        np.testing.assert_array_equal(_np(loss(y, p)), _np(loss(y, said_background)))


def test_sigmoid_cross_entropy_merges_unknown_into_background_hand_worked():
    y = np.zeros((1, 1, 1, 1, 2), "float32")
    y[..., 0], y[..., 1] = 1, partial.UNKNOWN  # labelled background, liver unknown
    logits = np.zeros((1, 1, 1, 1, 2), "float32")  # p_bg = p_liver = 0.5
    # merged background 1 - 0.5 * 0.5 = 0.75; liver channel counts 0; mean over the 2 channels
    np.testing.assert_allclose(_np(partial.partial_sigmoid_cross_entropy(y, logits)), [-np.log(0.75) / 2],
                               rtol=1e-6)


def test_an_unannotated_organ_found_by_the_network_adds_nothing_to_the_scn_loss():
    """SCN losses (prob, local, spatial): the network calls an unlabelled kidney 'kidney' or 'background'."""
    y = np.zeros((1, 1, 2, 2, 5), "float32")
    y[..., 0] = 1
    y[0, 0, 0, 0] = [0, 1, 0, 0, 0]  # one liver voxel; the rest background
    y[..., 2] = partial.UNKNOWN       # kidney not annotated
    found = np.full((1, 1, 2, 2, 5), 0.02, "float32")
    found[0, 0, 0, 0] = [0.02, 0.97, 0.02, 0.02, 0.02]
    found[0, 0, 0, 1] = [0.97, 0.02, 0.02, 0.02, 0.02]
    found[0, 0, 1, :] = [0.02, 0.02, 0.97, 0.02, 0.02]  # the kidney nobody labelled, found
    background = found.copy()
    background[0, 0, 1, :, 0], background[0, 0, 1, :, 2] = 0.97, 0.02  # ... or called background
    loss_fns, weights = objectives.model_losses(SegmenterConfig(), TrainConfig())
    assert set(loss_fns) == {"prob", "local", "spatial"}

    def total(p):
        return sum(weights[k] * float(_np(fn(y, _logit(p) if k != "prob" else p))[0]) for k, fn in loss_fns.items())

    assert total(found) == pytest.approx(total(background), rel=1e-6)
    naive = y.copy()
    naive[..., 2] = 0
    assert float(_np(losses.sigmoid_cross_entropy(naive, _logit(found)))[0]) > \
        float(_np(losses.sigmoid_cross_entropy(naive, _logit(background)))[0])  # the naive loss punishes finding it


def test_batch_dice_and_spatially_balanced_focal_hand_worked():
    # two samples, one channel over 2 voxels: y1 = [1, 0], p1 = [1, 0]; y2 = [0, 0], p2 = [1, 0]
    y = np.zeros((2, 1, 1, 2, 1), "float32")
    p = np.zeros_like(y)
    y[0, 0, 0, 0, 0] = p[0, 0, 0, 0, 0] = p[1, 0, 0, 0, 0] = 1
    known = np.ones((2, 1), "float32")
    # the batch is one volume: intersection 1, sums 1 + 2 -> Dice 2/3 for both samples
    np.testing.assert_allclose(_np(partial.batch_dice(y, p, known)), [1 / 3, 1 / 3], rtol=1e-5)
    # focal: class A has 1 voxel at p = 0.5, class B 3 voxels at p = 1; each class weighted by 1/volume
    y = np.zeros((1, 1, 1, 4, 2), "float32")
    y[..., 0, 0], y[..., 1:, 1] = 1, 1
    p = y.copy()
    p[..., 0, 0] = p[..., 0, 1] = 0.5
    np.testing.assert_allclose(_np(partial.spatially_balanced_focal(y, p, np.ones((1, 2), "float32"), 2.0)),
                               [(0.25 * np.log(2) + 0) / 2], rtol=1e-5)


def test_partial_losses_equal_the_papers_on_fully_annotated_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (2, 4, 4, 4))
    y = np.eye(5, dtype="float32")[labels]
    logits = rng.normal(size=y.shape).astype("float32")
    probs = 1 / (1 + np.exp(-logits))
    gd = partial.dice_term(partial.recalibrate_independent)
    np.testing.assert_allclose(_np(gd(y, probs)), _np(losses.generalized_dice_loss(y, probs)), rtol=1e-6)
    np.testing.assert_allclose(_np(partial.partial_sigmoid_cross_entropy(y, logits)),
                               _np(losses.sigmoid_cross_entropy(y, logits)), rtol=1e-6)
    # partial_mode="self" too
    np.testing.assert_allclose(_np(partial.self_target_sigmoid_cross_entropy(y, logits)),
                               _np(losses.sigmoid_cross_entropy(y, logits)), rtol=1e-5)
    np.testing.assert_allclose(_np(partial.dice_term(partial.recalibrate_self)(y, probs)),
                               _np(losses.generalized_dice_loss(y, probs)), rtol=1e-6)
    with pytest.raises(ValueError, match="partial_mode"):
        TrainConfig(partial_mode="guess")
    loc, _ = objectives.model_losses(LocalizerConfig(), TrainConfig())
    y2 = np.eye(2, dtype="float32")[(labels > 0).astype(int)]
    np.testing.assert_allclose(_np(loc["logits"](y2, logits[..., :2])),
                               _np(losses.softmax_generalized_dice_loss(y2, logits[..., :2])), rtol=1e-6)


# ----------------------------------------------------------------------------- partial_mode="self"


def test_self_target_cross_entropy_hand_worked():
    """One label-0 voxel with the liver unknown, and one voxel of the annotated kidney."""
    y = np.zeros((1, 1, 1, 2, 3), "float32")
    y[0, 0, 0, 0, 0] = 1          # voxel 0: label 0 (background or the unknown liver)
    y[0, 0, 0, 1, 2] = 1          # voxel 1: the annotated kidney
    y[..., 1] = partial.UNKNOWN
    logits = np.zeros((1, 1, 1, 2, 3), "float32")
    logits[0, 0, 0, 0, 1] = _logit(0.8)  # the network believes the liver is at voxel 0
    logits[0, 0, 0, 1] = [_logit(0.1), _logit(0.3), _logit(0.9)]
    # voxel 0: background target 1 - 0.8 = 0.2 against p = 0.5, as KL; liver: no term; kidney: BCE(0, 0.5)
    kl = 0.2 * np.log(0.2 / 0.5) + 0.8 * np.log(0.8 / 0.5)
    v0 = kl + 0 + np.log(2)
    # voxel 1: background BCE(0, 0.1); liver known absent on the kidney: BCE(0, 0.3); kidney BCE(1, 0.9)
    v1 = -np.log(0.9) - np.log(0.7) - np.log(0.9)
    np.testing.assert_allclose(_np(partial.self_target_sigmoid_cross_entropy(y, logits)), [(v0 + v1) / 6],
                               rtol=1e-5)


def test_confident_pseudo_labels_code_into_the_labels_and_back_into_the_target():
    """A one-organ case (liver annotated) with pseudo-labels: "none" on a label-0 voxel makes every
    unknown organ absent there, an organ value makes it present and the others absent, unsure stays
    unknown; a pseudo-label naming the annotated liver off its labels, or on an annotated voxel, is
    not taken. The channel stays unknown to every loss (its minimum is negative)."""
    labels = np.array([[[1, 0, 0, 0, 0, 1]]], np.uint8)
    pseudo = np.array([[[0, 0, 2, partial.PSEUDO_UNSURE, 1, 3]]], np.uint8)
    coded = partial.with_pseudo(labels, pseudo, (1,))
    assert coded[0, 0].tolist() == [1, 16, 18, 0, 0, 1]
    assert partial.with_pseudo(labels, None, (1,)) is labels and partial.with_pseudo(labels, pseudo, None) is labels
    target = partial.partial_target(coded, 5, (1,))
    a, p, u = partial.PSEUDO_ABSENT, partial.PSEUDO_PRESENT, partial.UNKNOWN
    assert target[0, 0, :, 0].tolist() == [0, 1, 1, 1, 1, 0]   # background: label 0 as before
    assert target[0, 0, :, 1].tolist() == [1, 0, 0, 0, 0, 1]   # the annotated liver: as labelled
    assert target[0, 0, :, 2].tolist() == [u, a, p, u, u, u]   # kidney
    assert target[0, 0, :, 3].tolist() == [u, a, a, u, u, u]   # spleen
    np.testing.assert_array_equal(_np(partial.known_channels(target[None])), [[1, 1, 0, 0, 0]])
    # the naive baseline and fully annotated cases ignore the codes' meaning: plain background
    assert partial.partial_target(coded, 5, (1,), honour=False)[0, 0, :, 0].tolist() == [0, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="do not match"):
        partial.with_pseudo(labels, pseudo[..., :3], (1,))


def test_self_mode_reads_confident_pseudo_labels_hand_worked():
    """The voxels of test_self_target_cross_entropy_hand_worked, the unknown liver now pseudo-labelled:
    present on voxel 0 (liver BCE(1, 0.8); background target 0), then absent (liver BCE(0, 0.8);
    background target 1). Voxel 1 (the annotated kidney) is unchanged; unsure gives the old value."""
    logits = np.zeros((1, 1, 1, 2, 3), "float32")
    logits[0, 0, 0, 0, 1] = _logit(0.8)
    logits[0, 0, 0, 1] = [_logit(0.1), _logit(0.3), _logit(0.9)]
    v1 = -np.log(0.9) - np.log(0.7) - np.log(0.9)

    def y_with(liver_at_voxel0):
        y = np.zeros((1, 1, 1, 2, 3), "float32")
        y[0, 0, 0, 0, 0] = 1
        y[0, 0, 0, 1, 2] = 1
        y[..., 1] = partial.UNKNOWN
        y[0, 0, 0, 0, 1] = liver_at_voxel0
        return y

    present = np.log(2) - np.log(0.8) + np.log(2)   # background BCE(0, 0.5), liver BCE(1, 0.8), kidney BCE(0, 0.5)
    absent = np.log(2) - np.log(0.2) + np.log(2)    # background BCE(1, 0.5), liver BCE(0, 0.8), kidney
    for value, v0 in ((partial.PSEUDO_PRESENT, present), (partial.PSEUDO_ABSENT, absent)):
        np.testing.assert_allclose(_np(partial.self_target_sigmoid_cross_entropy(y_with(value), logits)),
                                   [(v0 + v1) / 6], rtol=1e-5)
    kl = 0.2 * np.log(0.2 / 0.5) + 0.8 * np.log(0.8 / 0.5)
    np.testing.assert_allclose(_np(partial.self_target_sigmoid_cross_entropy(y_with(partial.UNKNOWN), logits)),
                               [(kl + np.log(2) + v1) / 6], rtol=1e-5)


def test_self_mode_pseudo_labels_of_two_unknown_organs_hand_worked():
    """Two unknown organs on three label-0 voxels: one present and one absent (background target 0),
    both absent (background target 1), and one absent with the other unsure (background target
    ``1 * (1 - 0.8)`` as KL, the unsure organ untouched). Channels: background, the annotated organ,
    unknown 1, unknown 2."""
    P, A, U = partial.PSEUDO_PRESENT, partial.PSEUDO_ABSENT, partial.UNKNOWN
    y = np.zeros((1, 1, 1, 3, 4), "float32")
    y[..., 0] = 1
    y[0, 0, 0, :, 2] = [P, A, A]
    y[0, 0, 0, :, 3] = [A, A, U]
    logits = np.broadcast_to(_logit(np.array([0.9, 0.5, 0.5, 0.8])), y.shape).copy()
    ln2 = np.log(2)
    v0 = -np.log(0.1) + ln2 + ln2 - np.log(0.2)
    v1 = -np.log(0.9) + ln2 + ln2 - np.log(0.2)
    v2 = 0.2 * np.log(0.2 / 0.9) + 0.8 * np.log(0.8 / 0.1) + ln2 + ln2
    np.testing.assert_allclose(_np(partial.self_target_sigmoid_cross_entropy(y, logits)), [(v0 + v1 + v2) / 12],
                               rtol=1e-5)


def test_pseudo_labels_outside_the_organ_values_are_refused():
    labels = np.zeros((1, 1, 3), np.uint8)
    with pytest.raises(ValueError, match=r"pseudo-labels hold \[7, 241\]"):
        partial.with_pseudo(labels, np.array([[[0, 7, 241]]], np.uint8), (1,))


def test_the_segmenter_sampler_carries_pseudo_labels_in_self_mode_only():
    """The pseudo-labels follow the sample's crop (nearest neighbour, like the labels) into the
    target, in ``self`` mode; re-calibration ignores them."""
    from conftest import blob_case

    from flare_seg.preprocess import bounding_box
    from flare_seg.training.samplers import make_sampler

    case = blob_case(0)
    roi = bounding_box(case.labels > 0)  # the box of all organs, as the self_box rows train in
    one = TrainCase(case.case_id, case.image_hu, case.labels, case.spacing_mm, annotated=(1,), roi=roi)
    pseudo = np.where(case.labels == 2, 2, 0).astype(np.uint8)  # the true kidney, as a confident answer
    config = SegmenterConfig()
    train = TrainConfig(partial_mode="self", train_size_zyx=None)
    with_pseudo = dataclasses.replace(one, pseudo=pseudo)
    _, target = make_sampler(config, train, [with_pseudo]).sample(0, augment_data=False)
    _, plain = make_sampler(config, train, [one]).sample(0, augment_data=False)
    _, full = make_sampler(config, train, [dataclasses.replace(one, annotated=None)]).sample(0, augment_data=False)
    np.testing.assert_array_equal(target[..., 2] == partial.PSEUDO_PRESENT, full[..., 2] == 1)
    assert (target[..., 2] == partial.PSEUDO_ABSENT).sum() > (full[..., 0] == 1).sum() // 2
    np.testing.assert_array_equal(target[..., :2], plain[..., :2])
    assert (plain[..., 2] == partial.UNKNOWN).all()
    _, recal = make_sampler(config, dataclasses.replace(train, partial_mode="recalibrate"),
                            [with_pseudo]).sample(0, augment_data=False)
    np.testing.assert_array_equal(recal, plain)


def test_self_mode_gives_an_unknown_organ_no_gradient_where_it_may_be():
    import tensorflow as tf

    y = np.zeros((1, 1, 1, 2, 3), "float32")
    y[0, 0, 0, 0, 0] = 1
    y[0, 0, 0, 1, 2] = 1
    y[..., 1] = partial.UNKNOWN
    logits = tf.Variable(np.random.default_rng(0).normal(size=y.shape).astype("float32"))
    with tf.GradientTape() as tape:
        loss = partial.self_target_sigmoid_cross_entropy(y, logits)
    grad = tape.gradient(loss, logits).numpy()
    assert grad[0, 0, 0, 0, 1] == 0            # the unknown liver on a label-0 voxel: untouched
    assert grad[0, 0, 0, 1, 1] > 0             # ... but pushed down on the annotated kidney's voxel
    # re-calibration, by contrast, pushes the unknown liver's logit on the label-0 voxel (upwards)
    with tf.GradientTape() as tape:
        loss = partial.partial_sigmoid_cross_entropy(y, logits)
    assert tape.gradient(loss, logits).numpy()[0, 0, 0, 0, 1] < 0


def test_self_mode_an_unannotated_organ_found_by_the_network_adds_nothing_to_the_scn_loss():
    y = np.zeros((1, 1, 2, 2, 5), "float32")
    y[..., 0] = 1
    y[0, 0, 0, 0] = [0, 1, 0, 0, 0]
    y[..., 2] = partial.UNKNOWN
    found = np.full((1, 1, 2, 2, 5), 0.02, "float32")
    found[0, 0, 0, 0] = [0.02, 0.97, 0.02, 0.02, 0.02]
    found[0, 0, 0, 1] = [0.97, 0.02, 0.02, 0.02, 0.02]
    found[0, 0, 1, :] = [0.03, 0.02, 0.97, 0.02, 0.02]  # the unlabelled kidney found, background agrees
    background = found.copy()
    background[0, 0, 1, :, 0], background[0, 0, 1, :, 2] = 0.97, 0.03  # ... or called background
    loss_fns, weights = objectives.model_losses(SegmenterConfig(), TrainConfig(partial_mode="self"))

    def total(p):
        return sum(weights[k] * float(_np(fn(y, _logit(p) if k != "prob" else p))[0]) for k, fn in loss_fns.items())

    assert total(found) == pytest.approx(total(background), abs=1e-6)
    disagrees = found.copy()
    disagrees[0, 0, 1, :, 0] = 0.97  # kidney found but the background says "nothing here": that costs
    assert total(disagrees) > total(found) + 0.1


def test_self_mode_dice_counts_annotated_organs_only():
    y, p = _four_voxels()
    y[..., 2] = partial.UNKNOWN
    target, probs, known = (_np(a) for a in partial.recalibrate_self(y, p))
    np.testing.assert_array_equal(known, [[0, 1, 0]])  # no background, no kidney: liver only
    loss = partial.dice_term(partial.recalibrate_self)
    # liver: target [1, 1, 0, 0], prediction [1, 0, 0, 0] -> Dice 2/3
    np.testing.assert_allclose(_np(loss(y, p)), [1 / 3], rtol=1e-5)


def test_self_mode_trains_and_resumes_through_the_cli_on_a_partially_annotated_folder(tmp_path):
    from conftest import blob_case, train_tiny_segmenter_cli, write_dataset

    write_dataset(tmp_path / "data", [blob_case(0), blob_case(1)])
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(
        {"annotated": {"blob0": ["liver"], "*": ["kidney", "spleen"]}}))
    run = train_tiny_segmenter_cli(tmp_path, tmp_path / "data", "--partial-mode", "self")
    assert json.loads((run / "train_config.json").read_text())["partial_mode"] == "self"  # kept by --resume
    import csv

    rows = list(csv.DictReader((run / "train_log.csv").open()))
    assert rows and all(np.isfinite(float(r["loss"])) for r in rows)


def test_a_partial_case_can_train_in_the_box_of_all_organs(caplog):
    """Its labels box its one annotated organ only; with ``roi`` the segmenter's grid is the one a
    fully labelled case (and the localizer at inference) gives, so the organ is not always centred."""
    import dataclasses

    from conftest import blob_case

    from flare_seg.preprocess import bounding_box
    from flare_seg.training.samplers import PartialSegSampler

    case = blob_case(0)
    train = TrainConfig(train_size_zyx=(16, 16, 16))
    config = SegmenterConfig()
    one_organ = dataclasses.replace(case, annotated=(4,))  # the small pancreas
    boxed = dataclasses.replace(one_organ, roi=bounding_box(case.labels > 0))
    with caplog.at_level("WARNING"):
        full, small, wide = (PartialSegSampler([c], train, config).base_record(0) for c in (case, one_organ, boxed))
    assert wide == full and np.prod(small.output_shape) < np.prod(full.output_shape)
    said = [r.getMessage() for r in caplog.records if "--partial-roi-localizer" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 partially annotated case(s)")  # the one-organ box only
    _, y = PartialSegSampler([boxed], train, config).sample(0, augment_data=False)
    assert y[..., 4].max() == 1 and y[..., 1].min() == partial.UNKNOWN  # targets still those of the one organ


def test_partial_cases_train_in_the_localizers_box_through_the_cli(tmp_path, tiny_model_dir, capsys):
    import dataclasses
    import shutil

    from conftest import blob_case, everything_is_foreground, train_tiny_segmenter_cli, write_dataset

    from flare_seg.cli.main import main as cli
    from flare_seg.training.roi import localizer_rois

    loc = tmp_path / "loc"
    shutil.copytree(tiny_model_dir / "loc", loc)
    everything_is_foreground(loc)  # its box: the whole image
    case = blob_case(0)
    partial_case = dataclasses.replace(case, annotated=(4,))
    full, boxed = localizer_rois([case, partial_case], loc, progress=False)
    assert full.roi is None  # fully annotated: the box of its labels, as before
    assert boxed.roi == ((0, 0, 0), tuple(n - 1 for n in case.labels.shape))

    write_dataset(tmp_path / "data", [blob_case(0), blob_case(1)])
    (tmp_path / "data" / "dataset.json").write_text(json.dumps({"annotated": ["pancreas"]}))
    run = train_tiny_segmenter_cli(tmp_path, tmp_path / "data", "--partial-roi-localizer", str(loc))
    assert json.loads((run / "data.json").read_text())["config"]["partial_roi_localizer"] == str(loc)  # resumes
    assert cli(["train", "--net", "loc", "--out", str(tmp_path / "l"), "--synthetic", "1", "--no-carbon",
                "--partial-roi-localizer", str(loc)]) == 2
    assert "--partial-roi-localizer applies to the segmenter" in capsys.readouterr().err
