"""Faults a folder run must survive, each provoked for real: a framework error inside one case,
corrupt weights, bad in-memory input, the retracing warning."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from flare_seg import io
from flare_seg.cli.main import main as cli
from flare_seg.geometry import Geometry
from flare_seg.predict import Job, Segmenter, case_error_message, run_jobs, segment

SPACING = (6.0, 5.0, 5.0)


def _phantom_ct(seed: int, shape=(32, 64, 64)) -> np.ndarray:
    from flare_seg.synth import phantom

    ct, _ = phantom.make_phantom(np.random.default_rng(seed), shape_zyx=shape, spacing_mm=SPACING)
    return ct


def _write_cases(folder: Path, count: int, shapes=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        shape = shapes[i] if shapes else (32, 64, 64)
        path = folder / f"case{i}_0000.nii.gz"
        io.write_image(_phantom_ct(i, shape), Geometry(shape, SPACING), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def tiny_segmenter(tiny_model_dir) -> Segmenter:
    return Segmenter.load(tiny_model_dir, device="cpu")


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flare-seg-memory-sampler" and t.is_alive()]


# ----------------------------------------------------------------------------- one case fails inside the framework


def test_framework_oom_in_one_case_is_isolated_and_the_others_finish(tmp_path, tiny_segmenter, monkeypatch):
    import tensorflow as tf

    inputs = _write_cases(tmp_path / "in", 3)
    jobs = [Job(p, tmp_path / "out" / f"case{i}.nii.gz", f"case{i}") for i, p in enumerate(inputs)]
    (tmp_path / "out").mkdir()
    real_predict = tiny_segmenter.seg.predict
    calls = []

    def predict_oom_on_second_case(x):
        calls.append(x.shape)
        if len(calls) == 2:  # a real TensorFlow OpError, which is not a RuntimeError
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1,64,64]\n"
                                                   "Hint: more lines of TensorFlow detail")
        return real_predict(x)

    monkeypatch.setattr(tiny_segmenter.seg, "predict", predict_oom_on_second_case)
    records = run_jobs(tiny_segmenter, jobs, progress=False)
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    error = records[1]["error"]
    assert str(inputs[1]) in error and "ResourceExhaustedError" in error and "OOM when allocating" in error
    assert "\n" not in error
    assert not jobs[1].output.exists()
    for ok in (0, 2):
        labels, geometry, _ = io.read_image(jobs[ok].output)
        assert geometry.shape == (32, 64, 64) and labels.dtype == np.uint8
    assert records[1]["memory"]["rss_bytes"]["max"] > 0  # the failed case's sampler ran and was stopped
    assert not _sampler_threads()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case0.nii.gz", "case2.nii.gz"]


def test_any_exception_is_isolated_but_keyboard_interrupt_aborts(tmp_path, tiny_segmenter, monkeypatch):
    inputs = _write_cases(tmp_path / "in", 2)
    jobs = [Job(p, tmp_path / f"case{i}.nii.gz", f"case{i}") for i, p in enumerate(inputs)]

    def broken(x):
        raise KeyError("a bug in some library")

    monkeypatch.setattr(tiny_segmenter.seg, "predict", broken)
    records = run_jobs(tiny_segmenter, jobs, progress=False)
    assert [r["status"] for r in records] == ["error", "error"]
    assert "KeyError" in records[0]["error"] and str(inputs[0]) in records[0]["error"]

    def interrupted(x):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_segmenter.seg, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(tiny_segmenter, jobs, progress=False)
    assert not _sampler_threads()  # stopped in ``finally`` on the way out too


def test_case_error_message_keeps_the_cause_on_one_line():
    err = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute:\nthe reason")
    assert case_error_message(Path("/x/a.nii.gz"), err) == (
        "/x/a.nii.gz: RuntimeError: Exception thrown in SimpleITK ImageFileReader_Execute:")
    assert case_error_message("/x/a.nii.gz", ValueError("/x/a.nii.gz: bad")) == "/x/a.nii.gz: bad"


# ----------------------------------------------------------------------------- corrupt weights


def _copy_models(tiny_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "models"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def _predict_cli(tmp_path: Path, model_dir: Path) -> int:
    ct = tmp_path / "c_0000.nii.gz"
    if not ct.exists():
        io.write_image(_phantom_ct(0), Geometry((32, 64, 64), SPACING), ct)
    return cli(["predict", "-i", str(ct), "-o", str(tmp_path / "out"), "-m", str(model_dir), "--no-progress",
                "--device", "cpu"])


@pytest.mark.parametrize("damage", ["truncated", "not_hdf5", "wrong_shapes"])
def test_corrupt_weights_exit_2_with_one_line_and_no_traceback(tmp_path, tiny_model_dir, capfd, damage):
    models = _copy_models(tiny_model_dir, tmp_path)
    weights = models / "seg" / "model.weights.h5"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "not_hdf5":
        weights.write_bytes(b"not an HDF5 file" * 64)
    else:  # the localizer's weights in the segmenter's folder: a valid file of the wrong network
        shutil.copyfile(models / "loc" / "model.weights.h5", weights)
    (models / "seg" / "model.weights.h5.sha256").unlink()  # so the load itself must refuse it
    code = _predict_cli(tmp_path, models)
    err = capfd.readouterr().err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln]
    assert code == 2
    assert "Traceback" not in err
    assert len(errors) == 1 and str(weights) in errors[0] and "cannot load weights" in errors[0], err
    reason = {"truncated": "truncated file", "not_hdf5": "file signature not found",
              "wrong_shapes": "shapes do not fit"}[damage]
    assert reason in errors[0]
    assert not (tmp_path / "out" / "c.nii.gz").exists()


def test_weights_that_do_not_match_their_sha256_exit_2(tmp_path, tiny_model_dir, capfd):
    models = _copy_models(tiny_model_dir, tmp_path)
    (models / "loc" / "model.weights.h5.sha256").write_text("0" * 64 + "\n")
    assert _predict_cli(tmp_path, models) == 2
    assert "does not match model.weights.h5.sha256" in capfd.readouterr().err


def test_weights_without_sha256_load_with_a_warning_in_log_and_report(tmp_path, tiny_model_dir, caplog):
    models = _copy_models(tiny_model_dir, tmp_path)
    (models / "seg" / "model.weights.h5.sha256").unlink()
    with caplog.at_level(logging.WARNING, logger="flare_seg"):
        segmenter = Segmenter.load(models, device="cpu")
    assert any("integrity cannot be checked" in r.getMessage() for r in caplog.records)
    warnings = segmenter.provenance()["warnings"]
    assert len(warnings) == 1 and "seg/model.weights.h5" in warnings[0] and "integrity" in warnings[0]


# ----------------------------------------------------------------------------- bad values through the Python API


@pytest.mark.parametrize("array, spacing, match", [
    (np.full((8, 8, 8), np.nan, np.float32), SPACING, "512 non-finite voxels"),
    (np.where(np.eye(8, dtype=bool)[None].repeat(8, 0), np.inf, -1000.0), SPACING, "64 non-finite"),
    (np.zeros((8, 8, 8), np.int16), (0.0, 1.0, 1.0), "spacing_mm: expected three positive"),
    (np.zeros((8, 8, 8), np.int16), (2.0, -1.0, 1.0), "spacing_mm: expected three positive"),
    (np.zeros((8, 8, 8), np.int16), (2.0, np.nan, 1.0), "spacing_mm: expected three positive"),
    (np.zeros((8, 8, 8), np.int16), (2.0, 1.0), "spacing_mm: expected three positive"),
    (np.zeros((8, 8), np.int16), (1.0, 1.0, 1.0), "expected a 3-D .* got 2-D"),
    (np.zeros((2, 8, 8, 8), np.int16), SPACING, "expected a 3-D .* got 4-D"),
    (np.zeros((8, 8, 8), bool), SPACING, "dtype bool"),
    (np.zeros((8, 8, 8), np.complex64), SPACING, "dtype complex64"),
    (np.array([[["a"]]]), SPACING, "dtype <U1"),
])
def test_bad_values_through_the_python_api_are_value_errors(array, spacing, match, tiny_segmenter):
    with pytest.raises(ValueError, match=match):
        segment(array, spacing, segmenter=tiny_segmenter)


def test_segmenter_refuses_an_array_that_does_not_fit_its_geometry(tiny_segmenter):
    with pytest.raises(ValueError, match="does not match the geometry"):
        tiny_segmenter.segment(np.zeros((8, 8, 8), np.int16), Geometry((8, 8, 9), SPACING))


def test_segment_without_a_segmenter_loads_the_models_once(tiny_model_dir, monkeypatch, caplog):
    from flare_seg import predict

    monkeypatch.setattr(predict, "_SEGMENTERS", {})
    loads = []
    real_load = Segmenter.load.__func__

    def counting_load(cls, *args, **kwargs):
        loads.append(args)
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "load", classmethod(counting_load))
    ct = _phantom_ct(1)
    with caplog.at_level(logging.WARNING):
        first = segment(ct, SPACING, model_dir=tiny_model_dir)
        second = segment(ct, SPACING, model_dir=str(tiny_model_dir) + "/")
    assert len(loads) == 1 and np.array_equal(first, second)
    assert not [r for r in caplog.records if "device set-up failed" in r.getMessage()]


# ----------------------------------------------------------------------------- no retracing warning


@pytest.mark.slow
def test_folder_of_different_sizes_prints_no_retracing_warning(tmp_path, tiny_model_dir, capfd):
    shapes = [(24, 48, 48), (32, 64, 64), (40, 56, 72), (28, 80, 60), (36, 64, 48), (32, 72, 72)]
    _write_cases(tmp_path / "in", len(shapes), shapes)
    code = cli(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tiny_model_dir),
                "--no-progress", "--device", "cpu", "--report", str(tmp_path / "r.json")])
    captured = capfd.readouterr()
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert len({tuple(c["segmenter"]["input_shape_zyx"]) for c in report["cases"]}) >= 2  # several graphs
    assert "retracing" not in captured.err + captured.out
