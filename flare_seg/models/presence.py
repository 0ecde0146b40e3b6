"""Seed 001's attention module as an option of every segmenter: an organ-presence head.

AttentionAnatomy (seed 001, section 2.2) modulates the segmentation output with a vector that
says which organs the input contains. Here a small head on the local U-Net's coarsest feature map
(the bottom block, 1/16 resolution with the default 5 levels: the widest view the network has)
predicts one logit per organ: global average and global max pooling, concatenated, a
``Dense(16)`` with leaky ReLU and a linear ``Dense(organs)`` (float32). Its sigmoid scales the
organs' final probabilities inside the model (:class:`~flare_seg.models.layers.PresenceScale`), so
inference needs no extra step; the logits are the model's ``"presence"`` output, which training
supervises (:mod:`flare_seg.training.presence`) and the per-case report records.

Average pooling says how much of an organ-like pattern there is, max pooling whether there is any
at all (a small organ cut at the border is present but covers few voxels).
"""

from __future__ import annotations

from keras import layers

from flare_seg.models.layers import PresenceScale

OUTPUT = "presence"
HIDDEN_UNITS = 16


def presence_logits(bottom, num_organs: int, leaky_alpha: float, dtype=None):
    """``(b, num_organs)`` float32 organ logits from a ``(b, z, y, x, c)`` feature map."""
    mean = layers.GlobalAveragePooling3D(name="presence_avg_pool", dtype=dtype)(bottom)
    peak = layers.GlobalMaxPooling3D(name="presence_max_pool", dtype=dtype)(bottom)
    x = layers.Concatenate(name="presence_features", dtype=dtype)([mean, peak])
    x = layers.Dense(HIDDEN_UNITS, kernel_initializer="he_normal", name="presence_hidden", dtype=dtype)(x)
    x = layers.LeakyReLU(negative_slope=leaky_alpha, name="presence_act", dtype=dtype)(x)
    return layers.Dense(num_organs, name="presence_logits", dtype="float32")(x)


def with_presence(outputs: dict, bottom, num_labels: int, leaky_alpha: float, dtype=None) -> dict:
    """``outputs`` with ``"prob"`` scaled by the head's organ probabilities and ``"presence"`` added."""
    logits = presence_logits(bottom, num_labels - 1, leaky_alpha, dtype)
    prob = PresenceScale(name="presence_scale")(outputs["prob"], logits)
    return {**outputs, "prob": prob, OUTPUT: logits}
