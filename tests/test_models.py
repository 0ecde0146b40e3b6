"""Both networks: exact parameter counts, valid-size output shapes (symbolic), round trips, gradients."""

import keras
import numpy as np
import pytest
from conftest import tiny_configs
from keras import ops

from flare_seg.config import LocalizerConfig, SegmenterConfig, load_config, replace, save_config
from flare_seg.models import build_model
from flare_seg.models.layers import LinearUpSampling3D
from flare_seg.models.scn import spatial_inputs


def test_paper_parameter_counts():
    assert build_model(LocalizerConfig()).count_params() == 637_474
    assert build_model(SegmenterConfig()).count_params() == 1_270_090


@pytest.mark.parametrize("size", [(32, 32, 32), (256, 80, 80), (112, 48, 64), (64, 80, 32)])
def test_localizer_output_shapes_symbolic(size):
    model = build_model(LocalizerConfig())
    spec = model.compute_output_spec(keras.KerasTensor((1, *size, 1)))
    assert tuple(spec["logits"].shape) == (1, *size, 2) and spec["logits"].dtype == "float32"


@pytest.mark.parametrize("size", [(32, 32, 32), (160, 128, 160), (96, 64, 128)])
def test_scn_output_shapes_symbolic(size):
    model = build_model(SegmenterConfig())
    spec = model.compute_output_spec(keras.KerasTensor((1, *size, 1)))
    for name in ("prob", "local", "spatial"):
        assert tuple(spec[name].shape) == (1, *size, 5)
    assert spec["prob"].dtype == "float32"


def test_spatial_nets_see_image_and_the_other_organs():
    assert spatial_inputs(0, 5) == [0, 2, 3, 4, 5]  # background: image + all 4 organ maps
    assert spatial_inputs(2, 5) == [0, 2, 4, 5]      # kidney: image + liver, spleen, pancreas


def test_linear_upsampling_matches_half_pixel_linear_interpolation():
    from scipy import ndimage

    x = np.random.default_rng(0).random((1, 3, 4, 5, 2)).astype("float32")
    for factor in (2, 4):
        up = ops.convert_to_numpy(LinearUpSampling3D(factor)(x))
        assert up.shape == (1, 3 * factor, 4 * factor, 5 * factor, 2)
        ref = ndimage.zoom(x[0, ..., 0], factor, order=1, mode="nearest", grid_mode=True)
        np.testing.assert_allclose(up[0, ..., 0], ref, atol=1e-5)
    layer = LinearUpSampling3D.from_config(LinearUpSampling3D(4).get_config())
    assert layer.factor == 4


def test_config_json_and_weights_round_trip_give_identical_outputs(tmp_path):
    _, seg = tiny_configs()
    seg = replace(seg, combination="entropy_blend")
    keras.utils.set_random_seed(3)
    model = build_model(seg)
    model.save_weights(tmp_path / "model.weights.h5")
    save_config(seg, tmp_path / "config.json")
    loaded_config = load_config(tmp_path / "config.json")
    assert loaded_config == seg
    rebuilt = build_model(loaded_config)
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    x = np.random.default_rng(1).random((1, 32, 32, 32, 1)).astype("float32")
    a, b = model(x, training=False), rebuilt(x, training=False)
    for name in ("prob", "local", "spatial"):
        np.testing.assert_array_equal(ops.convert_to_numpy(a[name]), ops.convert_to_numpy(b[name]))
    prob = ops.convert_to_numpy(a["prob"])
    assert prob.min() >= 0 and prob.max() <= 1


def test_gradients_are_finite_and_stop_at_the_local_maps():
    import tensorflow as tf

    from flare_seg.training import losses

    _, seg = tiny_configs()
    model = build_model(seg)
    x = tf.constant(np.random.default_rng(2).random((1, 32, 32, 32, 1)).astype("float32"))
    y = tf.one_hot(np.random.default_rng(3).integers(0, 5, (1, 32, 32, 32)), 5)
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=True)
        loss = losses.generalized_dice_loss(y, out["prob"]) + losses.sigmoid_cross_entropy(y, out["local"])
        spatial_only = tf.reduce_mean(out["spatial"])
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    local_vars = [v for v in model.trainable_variables if v.path.startswith("local")]
    assert all(g is None for g in tape.gradient(spatial_only, local_vars))  # stop-gradient into local maps


def test_mixed_precision_policy_keeps_float32_outputs():
    _, seg = tiny_configs()
    model = build_model(replace(seg, dtype_policy="mixed_float16"))
    # symbolic: TensorFlow has no float16 3-D pooling kernel on the CPU (fp16 is a GPU option)
    out = model.compute_output_spec(keras.KerasTensor((1, 32, 32, 32, 1)))
    assert all(out[k].dtype == "float32" for k in out)
    assert any(layer.compute_dtype == "float16" for layer in model.layers)


def test_unknown_combination_is_rejected():
    with pytest.raises(ValueError, match="combination"):
        SegmenterConfig(combination="sum")


@pytest.mark.parametrize("net,size,paper", [
    ("loc", (32, 32, 32), 8_613_207_612), ("loc", (256, 80, 80), 430_660_377_660),
    ("seg", (32, 32, 32), 8_797_627_020), ("seg", (160, 128, 160), 879_762_672_300),
])
def test_forward_flops_match_the_paper_within_0_2_percent(net, size, paper):
    from flare_seg.flops import conv_flops

    model = build_model(LocalizerConfig() if net == "loc" else SegmenterConfig())
    flops = conv_flops(model, size)  # 2 x MAC of the convolutions, symbolic shapes only
    assert abs(flops / paper - 1) < 0.002, flops
