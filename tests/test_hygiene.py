"""Import hygiene: the maths runs with Keras on another backend and without TensorFlow or SimpleITK.

That is how the GPU machine (PyTorch/JAX, no TensorFlow) trains and measures. The check runs in a
subprocess with both packages blocked and Keras on the JAX backend: phantom, preprocessing,
augmentation, samplers, models, losses, metrics, EMA and a few real training steps.
"""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["tensorflow"] = None   # any import of them now raises ImportError
    sys.modules["SimpleITK"] = None
    import tempfile
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from flare_seg import preprocess
    from flare_seg.training import augment
    from flare_seg.training import data
    from flare_seg.training import losses
    from flare_seg.evaluation import metrics
    from flare_seg.synth import phantom
    from flare_seg.training import loop as train
    from flare_seg.config import (AugmentConfig, GridConfig, NetworkConfig, SegmenterConfig, SegPreprocessConfig,
                                  TrainConfig)
    from flare_seg.geometry import Geometry
    from flare_seg.models import build_model
    from flare_seg.runtime import compiled_predictor

    rng = np.random.default_rng(0)
    ct, labels = phantom.make_phantom(rng, shape_zyx=(24, 48, 48), spacing_mm=(8.0, 8.0, 8.0))
    case = data.make_case("p", ct, labels, Geometry(ct.shape, (8.0, 8.0, 8.0)))
    seg = SegmenterConfig(local=NetworkConfig(2, 4), spatial=NetworkConfig(2, 4),
                          preprocess=SegPreprocessConfig(grid=GridConfig(8.0, (32, 32, 32), (32, 32, 32), 32),
                                                               margin_voxels=1))
    cfg = TrainConfig(steps=3, checkpoint_every=3, validate_every=3, train_size_zyx=(32, 32, 32),
                      augment=AugmentConfig(elastic_mm=5.0))
    with tempfile.TemporaryDirectory() as run:
        result = train.train(seg, cfg, [case], run, val_cases=[case], progress=False)
        model = build_model(seg)
        model.load_weights(run + "/model.weights.h5")
    out = compiled_predictor(model)(np.zeros((1, 32, 32, 32, 1), "float32"))
    assert out["prob"].shape == (1, 32, 32, 32, 5)
    assert float(np.asarray(losses.generalized_dice_loss(np.ones((1, 2, 2, 2, 1), "float32"),
                                                           np.ones((1, 2, 2, 2, 1), "float32")))[0]) < 1e-5
    assert "val_dsc_liver" in result.log_rows[-1]
    from flare_seg.config import replace
    from flare_seg.training import partial
    for variant in ({"architecture": "attention_unet", "anatomical_attention": True}, {"architecture": "unet"}):
        net = build_model(replace(seg, **variant))
        channels = 2 if variant.get("anatomical_attention") else 1
        assert compiled_predictor(net)(np.zeros((1, 32, 32, 32, channels), "float32"))["prob"].shape[-1] == 5
    y = partial.partial_target(np.zeros((2, 2, 2), np.uint8), 5, (1,))[None]
    assert np.isfinite(float(np.asarray(partial.partial_sigmoid_cross_entropy(y, np.zeros_like(y)))[0]))
    blocked = [m for m in ("tensorflow", "SimpleITK") if sys.modules.get(m) is not None]
    assert not blocked, blocked
    print("OK")
""")


@pytest.mark.slow
def test_maths_and_training_run_on_jax_without_tensorflow_or_simpleitk(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "KERAS_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]
