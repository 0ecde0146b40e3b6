"""Precision, recall and far false positives (seed 003's metrics) by hand-worked values and in ``evaluate``."""

import numpy as np
import pytest

from flare_seg.evaluation import metrics


def test_precision_recall_hand_worked_and_edge_rules():
    gt = np.zeros((1, 1, 10), bool)
    pred = np.zeros_like(gt)
    gt[..., :4] = True    # 4 voxels
    pred[..., 2:7] = True  # 5 voxels, 2 of them in the ground truth
    assert metrics.precision_recall(pred, gt) == (pytest.approx(2 / 5), pytest.approx(2 / 4))
    empty = np.zeros_like(gt)
    assert metrics.precision_recall(empty, empty) == (1.0, 1.0)
    assert metrics.precision_recall(pred, empty) == (0.0, 0.0)
    assert metrics.precision_recall(empty, gt) == (0.0, 0.0)


def test_far_false_positives_count_only_voxels_beyond_the_distance():
    gt = np.zeros((1, 1, 40), bool)
    gt[..., 0] = True
    pred = np.zeros_like(gt)
    pred[..., [1, 9, 10, 11, 30]] = True  # 2 mm voxels: distances 2, 18, 20, 22, 60 mm
    spacing = (10.0, 10.0, 2.0)  # voxel volume 200 mm^3 = 0.2 ml
    assert metrics.far_false_positive_ml(pred, gt, spacing, far_mm=20.0) == pytest.approx(2 * 0.2)
    assert metrics.far_false_positive_ml(pred, np.zeros_like(gt), spacing) == pytest.approx(5 * 0.2)
    assert metrics.far_false_positive_ml(np.zeros_like(gt), gt, spacing) == 0.0


def test_detection_scores_per_organ():
    gt = np.zeros((4, 4, 4), np.uint8)
    gt[:2] = 1
    pred = gt.copy()
    pred[0] = 3  # half the liver called spleen (spleen absent from the ground truth)
    scores = metrics.detection_scores(pred, gt, (1.0, 1.0, 1.0))
    assert scores["liver"]["precision"] == 1.0 and scores["liver"]["recall"] == 0.5
    assert scores["spleen"] == {"precision": 0.0, "recall": 0.0, "far_fp_ml": pytest.approx(16 / 1000)}
    assert scores["kidney"] == {"precision": 1.0, "recall": 1.0, "far_fp_ml": 0.0}
