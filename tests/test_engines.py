"""The lean engines: export to ONNX / OpenVINO, agreement with Keras, the split nets' exactness,
the no-TensorFlow import path, staleness checks and the OpenVINO cache key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from flare_seg.config import LocalizerConfig, SegmenterConfig

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("onnxruntime", "openvino")
NETS = (("loc", LocalizerConfig, "logits"), ("seg", SegmenterConfig, "prob"))


@pytest.fixture(scope="module")
def exported_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from flare_seg.export import export

    out = tmp_path_factory.mktemp("exported")
    export(tiny_model_dir, out, "onnx")
    export(tiny_model_dir, out, "openvino")
    return out


def _keras_output(folder: Path, cls, x: np.ndarray, output: str) -> np.ndarray:
    from flare_seg.predict import load_model

    return load_model(folder, cls).predict(x)[output]


def test_export_writes_pieces_beside_config_and_a_record(exported_dir, tiny_model_dir):
    from flare_seg.predict import sha256_of

    for net in ("loc", "seg"):
        folder = exported_dir / net
        record = json.loads((folder / "export.json").read_text())
        assert record["opset"] == 17 and record["formats"] == ["onnx", "openvino"]
        assert record["source_weights"]["sha256"] == sha256_of(tiny_model_dir / net / "model.weights.h5")
        assert record["versions"]["onnxruntime"] and record["versions"]["openvino"]
        assert (folder / "config.json").read_text() == (tiny_model_dir / net / "config.json").read_text()
        for piece in record["pieces"]:
            assert (folder / f"{piece}.onnx").is_file() and (folder / f"{piece}.xml").is_file()
        # one 3x3x3 convolution = one voxel of context at its resolution: head = 1 block, tail = 2
        # blocks of 2 convolutions; head2 / tail2 the same at half resolution (x2), whole 4-voxel steps
        halos = {name: piece["halo_z"] for name, piece in record["pieces"].items()}
        assert (halos["head"], halos["head2"], halos["tail2"], halos["tail"]) == (2, 4, 8, 4)
        assert record["split_depth"] == 2
        assert [n for n, p in record["pieces"].items() if not p["slabbed"]] == (
            ["core"] if net == "loc" else ["core", "spatial"])  # 1/4 resolution and coarser only
    assert list(json.loads((exported_dir / "seg" / "export.json").read_text())["pieces"]) == [
        "head", "head2", "core", "tail2", "tail", "pool", "spatial", "combine"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("net,cls,output", NETS)
def test_exported_engines_agree_with_keras(exported_dir, tiny_model_dir, engine, net, cls, output, rng):
    from flare_seg.engines import load_exported

    x = rng.uniform(-1, 1, (1, 64, 32, 48, 1)).astype(np.float32)
    expected = _keras_output(tiny_model_dir / net, cls, x, output)
    got = load_exported(exported_dir / net, cls, engine).predict(x)[output]
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_openvino_releases_each_pieces_request_and_a_second_call_computes_the_same(exported_dir, rng):
    """After a piece's last use its infer request (holding its last inputs and output) is dropped,
    so RSS does not add up over pieces and cases; the next call gets a fresh request, same result."""
    from flare_seg.engines.openvino import piece_runner
    from flare_seg.engines.split import SplitNet

    folder = exported_dir / "seg"
    record = json.loads((folder / "export.json").read_text())
    run_piece, release, _ = piece_runner(folder, record, "fp32", 1, use_cache=False)
    released = []

    def tracking_release(name):
        released.append(name)
        release(name)

    net = SplitNet(record, run_piece, 8, tracking_release)
    x = rng.uniform(-1, 1, (1, 32, 32, 32, 1)).astype(np.float32)
    first = net.predict(x)["prob"].copy()
    assert released == list(record["pieces"])  # every piece, once, in running order
    cells = dict(zip(run_piece.__code__.co_freevars, (c.cell_contents for c in run_piece.__closure__), strict=True))
    assert all(request is None for request in cells["requests"].values())  # nothing kept between calls
    second = net.predict(x)["prob"]
    assert np.array_equal(first, second)
    other = net.predict(rng.uniform(-1, 1, x.shape).astype(np.float32))["prob"]
    assert not np.array_equal(other, first)  # a fresh request computes, it does not replay


@pytest.mark.parametrize("engine", ENGINES)
def test_z_slabs_equal_the_untiled_net(exported_dir, engine, rng):
    """Slabs of 8 (interior halos on both sides, 8 slabs) against one slab (no halo: the untiled net)."""
    from flare_seg.engines import load_exported

    x = rng.uniform(-1, 1, (1, 64, 32, 32, 1)).astype(np.float32)
    whole = load_exported(exported_dir / "seg", SegmenterConfig, engine, slab_z=64).predict(x)["prob"]
    for slab_z in (8, 22):  # 22: slabs that are not a divisor of the grid
        slabbed = load_exported(exported_dir / "seg", SegmenterConfig, engine, slab_z=slab_z).predict(x)["prob"]
        assert float(np.abs(slabbed - whole).max()) <= 1e-5


@pytest.fixture(scope="module")
def presence_dir(tmp_path_factory) -> Path:
    """A tiny segmenter with seed 001's presence head (random weights; logit biases -2 .. 1, so the
    head's scaling changes every organ's probability), exported in both formats."""
    import keras
    from conftest import tiny_configs

    from flare_seg.config import replace, save_config
    from flare_seg.export import export_network
    from flare_seg.models import build_model

    src, out = tmp_path_factory.mktemp("presence_src"), tmp_path_factory.mktemp("presence_exported")
    config = replace(tiny_configs()[1], presence_head=True)
    keras.utils.set_random_seed(7)
    model = build_model(config)
    dense = model.get_layer("presence_logits")
    dense.set_weights([dense.get_weights()[0], np.array([-2.0, -1.0, 0.0, 1.0], np.float32)])
    save_config(config, src / "config.json")
    model.save_weights(src / "model.weights.h5")
    for fmt in ("onnx", "openvino"):
        export_network(src, out, "segmenter", fmt)
    return src, out


@pytest.mark.parametrize("engine", ENGINES)
def test_a_presence_head_exports_and_its_slabs_equal_keras(presence_dir, engine, rng):
    """The head's piece runs whole, every combine slab takes its logits whole: prob (scaled by the
    head) and the presence logits equal the Keras model's, at slabs of 8, 22 (not a divisor) and whole."""
    from flare_seg.engines import load_exported
    from flare_seg.predict import load_model

    src, out = presence_dir
    record = json.loads((out / "export.json").read_text())
    assert list(record["pieces"]) == ["head", "head2", "core", "presence", "tail2", "tail", "pool", "spatial",
                                      "combine"]
    assert record["extra_outputs"] == {"presence": "presence_logits"}
    assert record["pieces"]["combine"]["input_z_factors"] == [1, 4, 0]
    x = rng.uniform(-1, 1, (1, 64, 32, 32, 1)).astype(np.float32)
    keras_model = load_model(src, SegmenterConfig)
    expected = keras_model.predict(x)
    assert float(np.abs(expected["prob"] - _unscaled(keras_model, x)).max()) > 0.05  # the head does scale
    for slab_z in (8, 22, 64):
        got = load_exported(out, SegmenterConfig, engine, slab_z=slab_z).predict(x)
        assert set(got) == {"prob", "presence"} and got["presence"].shape == (1, 4)
        assert float(np.abs(got["prob"] - expected["prob"]).max()) <= 1e-5
        np.testing.assert_allclose(got["presence"], expected["presence"], atol=1e-5)


VARIANTS = {"unet": {"architecture": "unet"}, "attention_unet": {"architecture": "attention_unet"},
            "anatomical": {"anatomical_attention": True},
            "attention_unet+presence": {"architecture": "attention_unet", "presence_head": True}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_segmenter_option_exports_and_its_slabs_equal_keras(variant, tmp_path, rng):
    """The U-Net segmenters (their tail ends at the output; the attention gates live in the tails)
    and seed 000's two-channel input, on both engines, at slabs of 8, 22 and whole."""
    import keras
    from conftest import tiny_configs

    from flare_seg.config import replace, save_config
    from flare_seg.engines import load_exported
    from flare_seg.export import export_network
    from flare_seg.models import build_model
    from flare_seg.predict import load_model

    config = replace(tiny_configs()[1], **VARIANTS[variant])
    keras.utils.set_random_seed(1)
    save_config(config, tmp_path / "config.json")
    build_model(config).save_weights(tmp_path / "model.weights.h5")
    for fmt in ("onnx", "openvino"):
        record = export_network(tmp_path, tmp_path / "out", "segmenter", fmt)
    assert ("combine" in record["pieces"]) == (config.architecture == "scn")
    assert record["input_layout"] == f"(1, {config.input_channels}, z, y, x) float32"
    x = rng.uniform(-1, 1, (1, 64, 32, 32, config.input_channels)).astype(np.float32)
    expected = load_model(tmp_path, SegmenterConfig).predict(x)
    for engine in ENGINES:
        for slab_z in (8, 22, 64):
            got = load_exported(tmp_path / "out", SegmenterConfig, engine, slab_z=slab_z).predict(x)
            assert set(got) == ({"prob", "presence"} if config.presence_head else {"prob"})
            assert float(np.abs(got["prob"] - expected["prob"]).max()) <= 1e-5, (engine, slab_z)


def _unscaled(loaded, x):
    """The probabilities before the presence head scales them (the combine layer's output)."""
    import keras

    inner = keras.Model(loaded.model.inputs[0], loaded.model.get_layer("combine").output)
    return np.asarray(inner(x, training=False))


def test_a_halo_too_small_would_be_visible(exported_dir, rng):
    """The exactness test can fail: with the tail's halo cut to 2 the slab seams differ."""
    from flare_seg.engines import load_exported

    x = rng.uniform(-1, 1, (1, 64, 32, 32, 1)).astype(np.float32)
    whole = load_exported(exported_dir / "loc", LocalizerConfig, "onnxruntime", slab_z=64).predict(x)["logits"]
    cut = load_exported(exported_dir / "loc", LocalizerConfig, "onnxruntime", slab_z=8)
    cut.predict.__self__.pieces["tail"]["halo_z"] = 2
    assert float(np.abs(cut.predict(x)["logits"] - whole).max()) > 1e-4


def test_bundled_weights_ship_their_exported_pieces_and_they_agree_with_keras(rng):
    from flare_seg.engines import load_exported, read_export_record
    from flare_seg.predict import default_model_dir

    model_dir = default_model_dir()
    x = rng.uniform(-1, 1, (1, 32, 32, 32, 1)).astype(np.float32)
    for net, cls, output in NETS:
        read_export_record(model_dir / net)  # raises if the export is stale
        expected = _keras_output(model_dir / net, cls, x, output)
        got = load_exported(model_dir / net, cls, "openvino", slab_z=8).predict(x)[output]
        assert float(np.abs(got - expected).max()) <= 1e-5 * max(1.0, float(np.abs(expected).max()))


def test_a_stale_export_is_refused(exported_dir, tmp_path):
    import shutil

    from flare_seg.engines import load_exported

    stale = tmp_path / "loc"
    shutil.copytree(exported_dir / "loc", stale)
    with open(stale / "model.weights.h5", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="stale export"):
        load_exported(stale, LocalizerConfig, "openvino")
    with pytest.raises(ValueError, match="fp32 only"):
        load_exported(exported_dir / "loc", LocalizerConfig, "onnxruntime", precision="bf16")


def test_openvino_cache_is_keyed_by_weights_precision_and_version(tmp_path, monkeypatch):
    from flare_seg.engines.openvino import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = cache_dir("a" * 64, "fp32", "2026.4.1")
    assert a.parent.parent.parent == tmp_path / "flare-seg"
    assert len({a, cache_dir("b" * 64, "fp32", "2026.4.1"), cache_dir("a" * 64, "bf16", "2026.4.1"),
                cache_dir("a" * 64, "fp32", "2026.5.0")}) == 4


NO_TF_SCRIPT = textwrap.dedent("""
    import sys
    from flare_seg.cli.main import main
    rc = main(sys.argv[1:])
    heavy = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
    print("HEAVY", heavy)
    sys.exit(rc)
""")


@pytest.mark.parametrize("engine", ENGINES)
def test_predict_on_an_exported_engine_imports_no_tensorflow_or_keras(exported_dir, tmp_path, engine):
    from flare_seg import io
    from flare_seg.geometry import Geometry

    array = np.full((24, 40, 40), -1000, np.int16)
    array[6:18, 10:30, 10:30] = 60
    io.write_image(array, Geometry(array.shape, (6.0, 6.0, 6.0)), tmp_path / "case_0000.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    case = str(tmp_path / "case_0000.nii.gz")
    proc = subprocess.run([sys.executable, "-c", NO_TF_SCRIPT, "predict", "-q", "-i", case, "-o", str(tmp_path / "out"),
                           "-m", str(exported_dir), "--engine", engine,
                           "--report", str(tmp_path / "report.json"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout, proc.stdout
    labels, geometry, _ = io.read_image(tmp_path / "out" / "case.nii.gz")
    assert geometry.shape == array.shape and labels.dtype == np.uint8
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["provenance"]["engine"]["engine"] == engine


def test_label_counts_in_chunks_equal_bincount(rng):
    from flare_seg.predict import label_counts

    labels = rng.integers(0, 5, (7, 9, 11)).astype(np.uint8)
    np.testing.assert_array_equal(label_counts(labels, 5, chunk_voxels=50), np.bincount(labels.ravel(), minlength=5))


def test_precision_auto_is_bf16_only_on_openvino_where_the_cpu_has_it(monkeypatch):
    from flare_seg import engines
    from flare_seg.engines import openvino as ov_engine

    monkeypatch.setattr(ov_engine, "native_precisions", lambda: {"bf16"})
    assert engines.resolve_precision("auto", "openvino") == "bf16"
    assert engines.resolve_precision("auto", "onnxruntime") == "fp32"
    assert engines.resolve_precision("auto", "tensorflow") == "fp32"
    assert engines.resolve_precision("fp16", "openvino") == "fp16"  # explicit choices pass through
    monkeypatch.setattr(ov_engine, "native_precisions", set)  # an AVX2 CPU
    assert engines.resolve_precision("auto", "openvino") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, auto"):
        engines.resolve_precision("int8", "openvino")


def test_native_precisions_say_what_openvino_then_computes(exported_dir):
    """On this machine's real CPU: bf16 is listed exactly when a bf16 request runs bf16, so ``auto``
    never asks for what the CPU would emulate or silently run at f32."""
    from flare_seg.engines.openvino import native_precisions, piece_runner

    folder = exported_dir / "seg"
    record = json.loads((folder / "export.json").read_text())
    _, _, info = piece_runner(folder, record, "bf16", 1, use_cache=False)
    assert (info["inference_precision"] == "bf16") == ("bf16" in native_precisions())


def test_segmenter_with_precision_auto_runs_the_precision_it_resolves_to(exported_dir):
    from flare_seg.engines import resolve_precision
    from flare_seg.predict import Segmenter

    segmenter = Segmenter.load(exported_dir, engine="openvino", precision="auto", threads=1)
    expected = {"bf16": "bf16", "fp32": "f32"}[resolve_precision("auto", "openvino")]
    assert segmenter.seg.engine_info["inference_precision"] == expected
    assert segmenter.loc.engine_info["inference_precision"] == expected
