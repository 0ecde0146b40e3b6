"""The seeds' other methods: U-Net / attention-gate U-Net segmenters (seed 003), anatomical attention
(seed 000); config compatibility, the gate's arithmetic, the distance maps, and each option trained,
resumed, saved and run by ``flare-seg predict`` end to end on tiny volumes."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pytest
from conftest import blob_case, everything_is_foreground, tiny_configs, train_tiny_segmenter_cli, write_dataset

from flare_seg import anatomical
from flare_seg.cli.main import main as cli
from flare_seg.config import SegmenterConfig, TrainConfig, load_config, replace, save_config
from flare_seg.models import build_model
from flare_seg.models.attention_unet import attention_gate
from flare_seg.preprocess import GridRecord
from flare_seg.training.samplers import PartialSegSampler


def test_old_config_json_without_the_new_keys_loads_as_the_scn(tmp_path):
    save_config(SegmenterConfig(), tmp_path / "config.json")
    payload = json.loads((tmp_path / "config.json").read_text())
    del payload["config"]["architecture"], payload["config"]["anatomical_attention"]
    (tmp_path / "config.json").write_text(json.dumps(payload))
    config = load_config(tmp_path / "config.json")
    assert config.architecture == "scn" and not config.anatomical_attention
    with pytest.raises(ValueError, match="architecture must be one of"):
        SegmenterConfig(architecture="deeplab")


@pytest.mark.parametrize("architecture", ["unet", "attention_unet"])
def test_unet_segmenters_keep_the_output_contract_and_rebuild_from_config(tmp_path, architecture):
    _, seg = tiny_configs()
    config = replace(seg, architecture=architecture)
    model = build_model(config)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 32, 1)).astype("float32")
    out = model(x, training=False)
    assert set(out) == {"prob", "local"} and tuple(out["prob"].shape) == (1, 32, 32, 32, 5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["prob"]),
                               1 / (1 + np.exp(-keras.ops.convert_to_numpy(out["local"]))), rtol=1e-5, atol=1e-6)
    save_config(config, tmp_path / "config.json")
    model.save_weights(tmp_path / "model.weights.h5")
    again = build_model(load_config(tmp_path / "config.json"))
    again.load_weights(tmp_path / "model.weights.h5")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x, training=False)["prob"]),
                                  keras.ops.convert_to_numpy(out["prob"]))
    gates = [layer.name for layer in model.layers if layer.name.endswith("_gate")]
    assert len(gates) == (config.local.levels - 1 if architecture == "attention_unet" else 0)


def test_attention_gate_multiplies_the_skip_by_sigmoid_coefficients():
    skip_in = keras.Input((4, 4, 4, 3))
    gating_in = keras.Input((2, 2, 2, 3))
    model = keras.Model([skip_in, gating_in], attention_gate(skip_in, gating_in, 2, "g"))
    for layer in model.layers:
        if layer.name in ("g_theta", "g_phi", "g_psi"):
            kernel, bias = layer.get_weights()
            layer.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5 if layer.name == "g_theta" else 0.0)])
    # relu(0.5 + 0) = 0.5 in both channels; psi has zero kernel and zero bias -> sigmoid(0) = 0.5
    skip = np.random.default_rng(0).normal(size=(1, 4, 4, 4, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(model([skip, np.zeros((1, 2, 2, 2, 3), "float32")]))
    np.testing.assert_allclose(out, 0.5 * skip, rtol=1e-6)
    psi = model.get_layer("g_psi")
    kernel, _ = psi.get_weights()
    psi.set_weights([np.ones_like(kernel), np.array([-1.0], "float32")])  # 0.5 + 0.5 - 1 = 0 -> sigmoid 0.5 again
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model([skip, np.zeros((1, 2, 2, 2, 3), "float32")])),
                               0.5 * skip, rtol=1e-6)


def test_signed_distance_and_channel_hand_worked():
    mask = np.zeros((1, 1, 7), bool)
    mask[0, 0, 2:5] = True
    d = anatomical.signed_distance_mm(mask, (1.0, 1.0, 2.0))
    np.testing.assert_allclose(d[0, 0], [4, 2, -2, -4, -2, 2, 4])  # 2 mm voxels; inside negative
    np.testing.assert_allclose(anatomical.to_channel(np.array([-200.0, 20.0, 400.0])), [-2.0, 0.5, 2.0])
    assert np.all(anatomical.signed_distance_mm(np.zeros((2, 2, 2), bool), (1, 1, 1)) == 80.0)


def test_resample_between_grids_of_the_same_input():
    coarse = GridRecord((12, 12, 12), (4, 4, 4), (3.0,) * 3, (1.0, 1.0, 1.0), (3.0, 3.0, 3.0))
    fine = GridRecord((12, 12, 12), (12, 12, 12), (1.0,) * 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[None, None, :] * 3.0, (4, 4, 4))  # = input index - 1
    out = anatomical.resample_between(ramp, coarse, fine)
    np.testing.assert_allclose(out[0, 0], np.clip(np.arange(12) - 1.0, 0, 9))  # linear inside, clamped outside
    np.testing.assert_array_equal(anatomical.resample_between(ramp, coarse, coarse), ramp)


def test_anatomical_sampler_channel_follows_the_mask_and_is_perturbed_only_when_training():
    _, seg = tiny_configs()
    config = replace(seg, anatomical_attention=True)
    train = TrainConfig(train_size_zyx=(32, 32, 32))
    sampler = PartialSegSampler([blob_case(0)], train, config)
    x, y = sampler.sample(0, augment_data=False)
    assert x.shape == (32, 32, 32, 2) and y.shape == (32, 32, 32, 5)
    organ = y[..., 1:].sum(-1) > 0
    assert x[..., 1][organ].mean() < 0 < x[..., 1][~organ].mean()  # inside negative, outside positive
    np.testing.assert_array_equal(sampler.sample(0, augment_data=False)[0], x)  # validation: no perturbation
    assert not np.array_equal(sampler.sample(1)[0][..., 1], sampler.sample(2)[0][..., 1])


@pytest.mark.parametrize("flags", [["--architecture", "unet"], ["--architecture", "attention_unet"],
                                   ["--anatomical-attention"]])
def test_each_option_trains_resumes_and_predicts_through_the_cli(tmp_path, tiny_model_dir, flags):
    geometry = write_dataset(tmp_path / "data", [blob_case(0), blob_case(1)])
    run = train_tiny_segmenter_cli(tmp_path, tmp_path / "data", *flags)
    config = load_config(run / "config.json")
    assert (config.architecture, config.anatomical_attention) == (
        flags[1] if flags[0] == "--architecture" else "scn", flags == ["--anatomical-attention"])
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir / "loc", models / "loc")
    everything_is_foreground(models / "loc")
    (models / "seg").mkdir()
    for name in ("config.json", "model.weights.h5"):
        shutil.copy(run / name, models / "seg" / name)
    out = tmp_path / "out.nii.gz"
    report = tmp_path / "report.json"
    assert cli(["predict", "-i", str(tmp_path / "data" / "blob0_0000.nii.gz"), "-o", str(out), "-m", str(models),
                "--device", "cpu", "--no-progress", "--report", str(report)]) == 0
    from flare_seg import io

    labels, out_geometry, _ = io.read_image(out)
    assert out_geometry.matches(geometry) and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    case = json.loads(report.read_text())["cases"][0]
    assert case["status"] == "ok" and "segmenter" in case  # the segmenter ran (a 2-channel net needs its map)
    # exported, the default CPU engine (OpenVINO) runs the option too, with the same labels
    assert cli(["export", "-m", str(models), "-o", str(tmp_path / "exported"), "--format", "openvino"]) == 0
    out_ov, report_ov = tmp_path / "out_ov.nii.gz", tmp_path / "report_ov.json"
    assert cli(["predict", "-i", str(tmp_path / "data" / "blob0_0000.nii.gz"), "-o", str(out_ov), "-m",
                str(tmp_path / "exported"), "--no-progress", "--report", str(report_ov)]) == 0
    assert json.loads(report_ov.read_text())["provenance"]["engine"]["engine"] == "openvino"
    assert np.mean(io.read_image(out_ov)[0] == labels) >= 0.999


def test_per_organ_localizer_trains_on_partial_labels_with_the_hybrid_loss(tmp_path):
    import dataclasses

    from flare_seg.training.loop import train
    from flare_seg.training.samplers import make_sampler

    loc, _ = tiny_configs()
    loc = replace(loc, num_labels=5)
    cfg = TrainConfig(steps=2, checkpoint_every=2, validate_every=2, loss="hybrid", learning_rate=1e-3)
    cases = [dataclasses.replace(blob_case(i), annotated=(i + 1,)) for i in range(2)]
    _, target = make_sampler(loc, cfg, cases).sample(0, augment_data=False)
    assert target.shape[-1] == 5 and target[..., 2:].min() == -1.0  # case 0 labels the liver only
    result = train(loc, cfg, cases, tmp_path / "loc", val_cases=[blob_case(3)], progress=False)
    row = result.log_rows[-1]
    assert np.isfinite(float(row["loss"])) and "val_dsc_foreground" in row
