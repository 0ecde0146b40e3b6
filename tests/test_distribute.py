"""Multi-device training: the global-batch dropout, the strategy choice and its refusals, and real runs
on two logical CPU devices (TensorFlow MirroredStrategy, JAX DataParallel) against one device."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from flare_seg.config import GridConfig, NetworkConfig, SegmenterConfig, SegPreprocessConfig, TrainConfig, save_config
from flare_seg.models.layers import GlobalBatchDropout
from flare_seg.runtime import replica_share
from flare_seg.training import distribute
from flare_seg.training.distribute import Distribution

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the dropout layer


def _input(shape=(2, 4, 5, 6, 3)):
    return np.random.default_rng(0).normal(size=shape).astype("float32") + 2.0  # no zeros: masks are visible


def test_global_batch_dropout_is_keras_dropout_on_one_device():
    x = _input()
    ours, theirs = GlobalBatchDropout(0.5, seed=7), keras.layers.Dropout(0.5, seed=7)
    for _ in range(3):  # the seed state advances alike
        a = keras.ops.convert_to_numpy(ours(x, training=True))
        b = keras.ops.convert_to_numpy(theirs(x, training=True))
        np.testing.assert_array_equal(a, b)
        assert 0.3 < float(np.mean(a == 0)) < 0.7
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x, training=False)), x)  # identity at inference
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x)), x)
    assert keras.ops.convert_to_numpy(ours.seed_generator.state).tolist() == \
        keras.ops.convert_to_numpy(theirs.seed_generator.state).tolist()
    clone = GlobalBatchDropout.from_config(ours.get_config())
    assert (clone.rate, clone.seed) == (0.5, 7)
    with pytest.raises(ValueError, match="GlobalBatchDropout takes no noise_shape"):
        GlobalBatchDropout(0.5, noise_shape=(None, 1, 1, 1, 3))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="replica slices are the tf.distribute path")
def test_replica_slices_are_the_global_batch_mask_which_keras_dropout_is_not():
    """Mask for mask: replica k's slice of the global draw is row k of one device's two-sample dropout."""
    x = _input()
    one_device = keras.ops.convert_to_numpy(keras.layers.Dropout(0.3, seed=11)(x, training=True))
    replicas = [keras.ops.convert_to_numpy(GlobalBatchDropout(0.3, seed=11).replica_slice(x[k : k + 1], 2, k))
                for k in range(2)]  # each replica starts from the same seed state, as under MirroredStrategy
    np.testing.assert_array_equal(np.concatenate(replicas), one_device)
    per_replica = [keras.ops.convert_to_numpy(keras.layers.Dropout(0.3, seed=11)(x[k : k + 1], training=True))
                   for k in range(2)]
    assert not np.array_equal(np.concatenate(per_replica), one_device)  # why the layer exists


def test_outside_a_strategy_there_is_one_replica():
    assert replica_share() == (1, 0)


def test_bundled_weights_load_into_the_networks_with_the_new_dropout():
    from flare_seg.config import load_config
    from flare_seg.models import build_model

    for net in ("loc", "seg"):
        model = build_model(load_config(ROOT / "weights" / net / "config.json"))
        assert any(isinstance(layer, GlobalBatchDropout) for layer in model.layers)
        model.load_weights(ROOT / "weights" / net / "model.weights.h5")
        stored = _weights(ROOT / "weights" / net / "model.weights.h5")
        assert sum(w.size for w in stored.values()) == sum(int(w.size) for w in model.get_weights())


# ----------------------------------------------------------------------------- choosing the strategy


def test_no_strategy_and_one_visible_device_train_on_one_device(caplog, tmp_path):
    from flare_seg.training.data import TrainCase
    from flare_seg.training.loop import train

    assert distribute.make_distribution(None, TrainConfig()).replicas == 1
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if len(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")) > 1:
            pytest.skip("this process sees several devices")
    with caplog.at_level(logging.WARNING, logger="flare_seg.training.distribute"):
        chosen = distribute.make_distribution("mirrored", TrainConfig(batch_size=3, train_size_zyx=(8, 8, 8)))
    assert chosen.replicas == 1 and chosen.strategy is None
    assert "one device visible" in caplog.text
    with pytest.raises(ValueError, match="distribute must be one of"):
        distribute.make_distribution("ring", TrainConfig())
    labels = np.zeros((24, 32, 32), np.uint8)
    labels[8:16, 10:20, 8:14], labels[8:14, 12:20, 20:26] = 1, 3
    case = TrainCase("box", np.where(labels > 0, 80, -1000).astype(np.int16), labels, (8.0, 8.0, 8.0))
    config = _tiny_scn_config()
    result = train(config, TrainConfig(steps=1, checkpoint_every=1, validate_every=1, batch_size=2,
                                       train_size_zyx=(32, 32, 32)), [case], tmp_path / "run", progress=False,
                   distribute="mirrored")  # warns again, then trains as without --distribute
    assert result.step == 1 and (tmp_path / "run" / "model.weights.h5").exists()


def test_settings_that_would_not_train_as_on_one_device_are_refused(caplog):
    two = Distribution("mirrored", ("/cpu:0", "/cpu:1"))
    crops = {"train_size_zyx": (8, 8, 8)}
    distribute.check(two, TrainConfig(batch_size=4, **crops), "tensorflow")
    with pytest.raises(ValueError, match="--batch-size 3 does not split evenly over 2 devices"):
        distribute.check(two, TrainConfig(batch_size=3, **crops), "tensorflow")
    with pytest.raises(ValueError, match="--clipnorm cannot be used with --distribute mirrored on TensorFlow"):
        distribute.check(two, TrainConfig(batch_size=2, clipnorm=1.0, **crops), "tensorflow")
    distribute.check(two, TrainConfig(batch_size=2, clipnorm=1.0, **crops), "jax")  # JAX clips the global gradients
    distribute.check(Distribution(), TrainConfig(clipnorm=1.0), "tensorflow")
    with caplog.at_level(logging.WARNING, logger="flare_seg.training.distribute"):
        distribute.check(two, TrainConfig(batch_size=4, loss="hybrid", **crops), "jax")
        assert caplog.text == ""  # JAX computes batch Dice on the global batch (the JAX run below)
        distribute.check(two, TrainConfig(batch_size=4, loss="hybrid", **crops), "tensorflow")
    assert "each of the 2 replicas computes batch Dice over its own 2 samples" in caplog.text


def test_unknown_strategy_is_an_argparse_error(tmp_path, capsys):
    from flare_seg.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "r"), "--distribute", "ring"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ring'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs on two CPU devices

#: Runs ``flare-seg train`` once per argv list in one process with two CPU devices: TensorFlow's
#: CPU split into two logical devices before it starts, or JAX's host platform forced to two.
RUNNER = textwrap.dedent("""
    import json, os, sys
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from flare_seg.cli.main import main
    print(json.dumps([main(argv) for argv in json.loads(sys.argv[1])]))
""")


def _tiny_scn_config() -> SegmenterConfig:
    """An SCN of two-level U-Nets with 4 filters at 8 mm and more dropout than the paper's, to be seen."""
    grid = GridConfig(8.0, (32, 32, 32), (32, 32, 32), 32)
    return SegmenterConfig(local=NetworkConfig(levels=2, filters=4, dropout_rate=0.3),
                           spatial=NetworkConfig(levels=2, filters=4, dropout_rate=0.3),
                           preprocess=SegPreprocessConfig(grid=grid, margin_voxels=1))


def _tiny_scn(path: Path) -> Path:
    save_config(_tiny_scn_config(), path)
    return path


def _run_all(tmp_path: Path, backend: str, runs: dict[str, list[str]]) -> tuple[list[int], str]:
    """``flare-seg train`` for each named run (folder ``tmp_path / name``, ``name+...`` continues it);
    returns the exit codes and the log."""
    common = ["--synthetic", "2", "--synthetic-shape", "24,48,48", "--synthetic-spacing", "8,8,8",
              "--train-size", "32,32,32", "--no-augment", "--lr", "1e-3", "--checkpoint-every", "1",
              "--config", str(_tiny_scn(tmp_path / "scn.json"))]
    argvs = []
    for name, extra in runs.items():
        resume = "--resume" in extra
        argvs.append(["train", "--out", str(tmp_path / name.split("+")[0]), "--no-carbon", "--no-progress"]
                     + ([] if resume else common) + extra)
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_HOME": str(tmp_path / "keras"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(argvs)], env=env, capture_output=True,
                          text=True, timeout=5400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _losses(run: Path) -> list[float]:
    with (run / "train_log.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))  # one row per step
    return [float(r["loss"]) for r in rows]


def _weights(path: Path) -> dict[str, np.ndarray]:
    found = {}
    with h5py.File(path) as fh:
        fh.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


def _max_relative_gap(a: list[float], b: list[float]) -> float:
    return float(np.max(np.abs(np.subtract(a, b)) / np.abs(b)))


@pytest.mark.slow
def test_mirrored_strategy_on_two_cpus_trains_as_one_device_and_resumes_exactly(tmp_path):
    pytest.importorskip("tensorflow")
    batch2 = ["--batch-size", "2", "--steps", "4", "--val-synthetic", "1", "--validate-every", "2"]
    mirrored = ["--distribute", "mirrored"]
    codes, log_text = _run_all(tmp_path, "tensorflow", {
        "one": batch2,
        "two": batch2 + mirrored,
        "split": batch2[:3] + ["2"] + batch2[4:] + mirrored,
        "split+resume": ["--resume", "--steps", "4"],  # the strategy is saved with the run
        "clipped": ["--batch-size", "2", "--steps", "1", "--clipnorm", "1"] + mirrored,
        "odd": ["--batch-size", "3", "--steps", "1"] + mirrored,
    })
    assert codes == [0, 0, 0, 0, 2, 2], log_text[-3000:]
    assert log_text.count("--distribute mirrored: 2 replicas") == 3  # two, split, split+resume (saved)
    assert json.loads((tmp_path / "split" / "train_config.json").read_text())["distribute"] == "mirrored"
    assert "--clipnorm cannot be used with --distribute mirrored on TensorFlow" in log_text
    assert "--batch-size 3 does not split evenly over 2 devices" in log_text
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == 4 and one[0] != one[-1]
    assert _max_relative_gap(two, one) < 1e-5, (one, two)
    ema_one, ema_two = _weights(tmp_path / "one" / "model.weights.h5"), _weights(tmp_path / "two" / "model.weights.h5")
    assert ema_one.keys() == ema_two.keys()
    for key in ema_one:
        np.testing.assert_allclose(ema_two[key], ema_one[key], rtol=1e-4, atol=1e-6, err_msg=key)
    resumed = _weights(tmp_path / "split" / "model.weights.h5")
    assert all(np.array_equal(resumed[k], ema_two[k]) for k in ema_two)  # stop + resume = uninterrupted, bit for bit
    np.testing.assert_allclose(_losses(tmp_path / "split"), two, rtol=1e-6)  # logged from Keras' running means
    for name in ("one", "two"):  # validation ran on the EMA weights under the strategy too
        with (tmp_path / name / "train_log.csv").open(newline="") as fh:
            assert [r["val_dsc_liver"] != "" for r in csv.DictReader(fh)] == [False, True, False, True]


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 4, reason="XLA:CPU (jaxlib 0.10) with two forced host devices on a "
                    "2-core host: one device's all-reduce waits for the other, whose computation never starts "
                    "(SIGABRT after 40 s, or a hang with longer timeouts; also single-threaded Eigen)")
def test_jax_data_parallel_on_two_cpus_trains_as_one_device_with_global_clipping(tmp_path):
    pytest.importorskip("jax")
    # A clip norm far below the gradients' so every step clips: clipping per device would show.
    args = ["--batch-size", "2", "--steps", "3", "--clipnorm", "1e-3", "--loss", "hybrid"]
    codes, log_text = _run_all(tmp_path, "jax", {"one": args, "two": args + ["--distribute", "mirrored"]})
    assert codes == [0, 0], log_text[-3000:]
    assert log_text.count("--distribute mirrored: 2 replicas") == 1
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert one[0] != one[-1]
    assert _max_relative_gap(two, one) < 1e-5, (one, two)
