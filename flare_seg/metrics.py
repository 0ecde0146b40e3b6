"""Segmentation metrics as small pure functions, with FLARE's edge rules written once.

FLARE rules (``../shared/FLARE21.md``): an organ absent from both ground truth and prediction
scores 1; absent from the ground truth but predicted scores 0.
"""

from __future__ import annotations

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
