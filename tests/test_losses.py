"""Losses of equations 1 and 2: perfect predictions, hand-worked values, finite gradients."""

import numpy as np
import pytest
from keras import ops

from flare_seg.training import losses


def _np(x):
    return ops.convert_to_numpy(x)


def _one_hot(labels, n):
    return (labels[..., None] == np.arange(n)).astype("float32")


def test_generalized_dice_perfect_prediction_is_zero():
    labels = np.random.default_rng(0).integers(0, 3, (2, 4, 4, 4))
    y = _one_hot(labels, 3)
    np.testing.assert_allclose(_np(losses.generalized_dice_loss(y, y)), 0.0, atol=1e-6)


def test_generalized_dice_hand_worked_value():
    # one sample, 2 labels over 4 voxels: truth [1,1,0,0] for label 1 (label 0 the rest)
    y = np.zeros((1, 1, 1, 4, 2), "float32")
    y[..., :2, 1] = 1
    y[..., 2:, 0] = 1
    p = np.zeros_like(y)
    p[..., 0, 1] = 1  # label 1 predicted on voxel 0 only
    p[..., 1:, 0] = 1
    # volumes 2 and 2 -> weights 1/4 each; intersections: label0 2, label1 1; sums: label0 2+3, label1 2+1
    expected = 1 - 2 * (0.25 * 2 + 0.25 * 1) / (0.25 * 5 + 0.25 * 3)
    np.testing.assert_allclose(_np(losses.generalized_dice_loss(y, p)), [expected], rtol=1e-5)


def test_absent_label_gets_largest_present_weight_not_infinity():
    y = np.zeros((1, 1, 1, 4, 3), "float32")
    y[..., :, 0] = 1  # only label 0 present
    p = y.copy()
    p[..., 0, 2] = 1.0  # a false positive of absent label 2 on one voxel
    value = float(_np(losses.generalized_dice_loss(y, p))[0])
    # weights: label0 1/16, labels 1 and 2 get 1/16 as well -> 1 - 2*(4/16) / ((8 + 1)/16) = 1/9
    assert value == pytest.approx(1 / 9, rel=1e-5) and np.isfinite(value)


def test_sigmoid_cross_entropy_matches_closed_form():
    z = np.array([0.0, 1.0, 1.0, 0.0], "float32").reshape(1, 1, 1, 4, 1)
    x = np.array([-2.0, 3.0, -1.0, 50.0], "float32").reshape(1, 1, 1, 4, 1)
    expected = np.mean(np.logaddexp(0.0, x.astype(np.float64)) - z * x)  # -z log p - (1-z) log(1-p)
    np.testing.assert_allclose(_np(losses.sigmoid_cross_entropy(z, x)), [expected], rtol=1e-5)
    huge = losses.sigmoid_cross_entropy(z, x * 1000)
    assert np.all(np.isfinite(_np(huge)))


def test_perfect_logits_give_near_zero_losses():
    labels = np.random.default_rng(1).integers(0, 2, (1, 4, 4, 4))
    y = _one_hot(labels, 2)
    logits = (y * 2 - 1) * 30
    assert float(_np(losses.softmax_generalized_dice_loss(y, logits))[0]) < 1e-6
    assert float(_np(losses.sigmoid_cross_entropy(y, logits))[0]) < 1e-6


def test_scn_loss_weights_are_configurable():
    loss, weights = losses.scn_losses(0.5, 2.0)
    assert set(loss) == {"prob", "local", "spatial"}
    assert weights == {"prob": 1.0, "local": 0.5, "spatial": 2.0}


def test_gradients_are_finite():
    import tensorflow as tf

    y = tf.constant(_one_hot(np.random.default_rng(2).integers(0, 3, (1, 4, 4, 4)), 3))
    logits = tf.Variable(np.random.default_rng(3).normal(size=(1, 4, 4, 4, 3)).astype("float32"))
    with tf.GradientTape() as tape:
        value = losses.softmax_generalized_dice_loss(y, logits) + losses.sigmoid_cross_entropy(y, logits)
    grad = tape.gradient(value, logits)
    assert np.all(np.isfinite(grad.numpy())) and np.abs(grad.numpy()).sum() > 0
