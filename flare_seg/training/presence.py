"""Training the organ-presence head (seed 001's attention module, :mod:`flare_seg.models.presence`).

Target: per organ, 1 when at least ``TrainConfig.presence_min_ml`` of it lies inside the training
sample's grid (its voxels on the network grid x their volume), 0 when less does, and
:data:`~flare_seg.training.partial.UNKNOWN` (``-1``) when the case does not annotate the organ
(``dataset.json``): "not labelled" says nothing about whether the organ is in the scan. It is
computed from the sample's own target, after cropping and augmentation, so a crop that cuts an
organ away teaches "absent" and a chest-only view teaches "nothing here".

Loss: binary cross-entropy per organ on the head's logits, unknown organs multiplied by 0, summed
and divided by the number of organs (not by the number of annotated ones), so an unannotated organ
adds exactly nothing and does not re-weight the others. The seed trains its classification
branch with cross-entropy too; its targets are body regions, ours the organs themselves, which
the annotations give directly.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from flare_seg.models.presence import OUTPUT  # noqa: F401 (the output the head's logits come out of)
from flare_seg.training.partial import UNKNOWN


def presence_target(target: np.ndarray, voxel_ml: float, min_ml: float = 0.5) -> np.ndarray:
    """``(organs,)`` float32 from a one-hot ``(z, y, x, labels)`` sample target (channel 0 background).

    1 where the organ's voxels x ``voxel_ml`` reach ``min_ml``, 0 below, :data:`UNKNOWN` for a
    channel marked unknown (:func:`flare_seg.training.partial.partial_target`)."""
    if target.ndim != 4 or target.shape[-1] < 2:
        raise ValueError(f"target: expected (z, y, x, labels >= 2), got shape {target.shape}")
    if not voxel_ml > 0:
        raise ValueError(f"voxel_ml must be positive, got {voxel_ml}")
    organs = target[..., 1:].reshape(-1, target.shape[-1] - 1)
    volume_ml = np.count_nonzero(organs > 0.5, axis=0) * float(voxel_ml)
    out = (volume_ml >= min_ml).astype(np.float32)
    out[organs.min(axis=0) < 0] = UNKNOWN
    return out


def presence_cross_entropy(y_true, logits):
    """``(b,)``: sum over annotated organs of the binary cross-entropy of ``logits`` against the
    0/1 target, divided by the number of organs; :data:`UNKNOWN` organs count 0 (stable form)."""
    y_true = ops.cast(y_true, "float32")
    x = ops.cast(logits, "float32")
    known = ops.cast(ops.greater_equal(y_true, 0.0), "float32")
    z = ops.maximum(y_true, 0.0)
    per_organ = ops.relu(x) - x * z + ops.log1p(ops.exp(-ops.abs(x)))
    return ops.sum(per_organ * known, axis=-1) / float(x.shape[-1])


def presence_accuracy(target: np.ndarray, logits: np.ndarray) -> float | None:
    """Share of annotated organs whose predicted presence (logit > 0) matches ``target``; None if none is."""
    known = target >= 0
    if not known.any():
        return None
    return float(np.mean((logits[known] > 0) == (target[known] > 0.5)))
