"""Losses of seed 002 (equations 1 and 2), backend-neutral (``keras.ops``).

All take ``(y_true, y_pred)`` with channels last: ``y_true`` a one-hot float map, ``y_pred``
probabilities or logits as named. They return one value per batch element (Keras averages).
"""

from __future__ import annotations

from keras import ops

_SPATIAL_AXES = (1, 2, 3)


def generalized_dice_loss(y_true, probs, eps: float = 1e-6):
    """Generalized Dice loss (Sudre et al. 2017) with squared label-volume weights ``1 / (sum r_l)^2``.

    ``1 - 2 sum_l w_l sum r p / sum_l w_l sum (r + p)``. A label absent from ``y_true`` would get
    an infinite weight; it gets the largest weight among the present labels instead (as NiftyNet
    does), so it is still pushed towards zero without dominating.
    """
    y_true = ops.cast(y_true, "float32")
    probs = ops.cast(probs, "float32")
    volume = ops.sum(y_true, axis=_SPATIAL_AXES)  # (b, labels)
    present = ops.greater(volume, 0.5)
    weights = ops.where(present, 1.0 / ops.square(ops.maximum(volume, 1.0)), 0.0)
    max_weight = ops.max(weights, axis=-1, keepdims=True)
    weights = ops.where(present, weights, max_weight)
    intersection = ops.sum(y_true * probs, axis=_SPATIAL_AXES)
    total = ops.sum(y_true + probs, axis=_SPATIAL_AXES)
    numerator = 2.0 * ops.sum(weights * intersection, axis=-1)
    denominator = ops.sum(weights * total, axis=-1)
    return 1.0 - (numerator + eps) / (denominator + eps)


def softmax_generalized_dice_loss(y_true, logits):
    """Generalized Dice on the softmax of ``logits`` (the localization loss, equation 1)."""
    return generalized_dice_loss(y_true, ops.softmax(ops.cast(logits, "float32"), axis=-1))


def sigmoid_cross_entropy(y_true, logits):
    """Mean binary cross-entropy of independent sigmoids per label (numerically stable form)."""
    z = ops.cast(y_true, "float32")
    x = ops.cast(logits, "float32")
    per_voxel = ops.relu(x) - x * z + ops.log1p(ops.exp(-ops.abs(x)))
    return ops.mean(per_voxel, axis=(1, 2, 3, 4))


def scn_losses(lambda_local: float = 1.0, lambda_spatial: float = 1.0) -> tuple[dict, dict]:
    """Loss and loss-weight dicts for the SCN's outputs (equation 2): GD on ``prob`` + λ1 CE(local) + λ2 CE(spatial)."""
    losses = {"prob": generalized_dice_loss, "local": sigmoid_cross_entropy, "spatial": sigmoid_cross_entropy}
    weights = {"prob": 1.0, "local": float(lambda_local), "spatial": float(lambda_spatial)}
    return losses, weights
