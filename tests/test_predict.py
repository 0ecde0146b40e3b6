"""Inference end to end: naming, the real CLI on a phantom and a real CT, the oracle, bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file, tiny_configs
from oracle import oracle_segmenter

from flare_seg import io
from flare_seg.cli.main import main as cli
from flare_seg.evaluation import metrics
from flare_seg.geometry import Geometry, rotation_direction
from flare_seg.predict import Segmenter, plan_jobs, segment

STAGES = {"read", "loc_preprocess", "loc_predict", "roi", "seg_preprocess", "seg_predict", "to_input_grid", "write"}


def _write_ct(path: Path, array, spacing_zyx=(5.0, 3.0, 3.0), direction=None):
    geometry = Geometry(array.shape, spacing_zyx, (10.0, -5.0, 2.0),
                        direction or (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    io.write_image(np.asarray(array), geometry, path)
    return geometry


def _phantom(seed=0, shape=(48, 96, 96), spacing=(5.0, 3.5, 3.5)):
    from flare_seg.synth import phantom

    return phantom.make_phantom(np.random.default_rng(seed), shape_zyx=shape, spacing_mm=spacing)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- naming


def test_output_names_follow_flare_convention(tmp_path):
    for name in ("FLARE_001_0000.nii.gz", "scan.nrrd", "other.mha"):
        _write_ct(tmp_path / name, np.zeros((4, 4, 4), np.int16))
    (tmp_path / "README.txt").write_text("not an image")
    jobs = plan_jobs(tmp_path, tmp_path / "out")
    assert sorted(j.output.name for j in jobs) == ["FLARE_001.nii.gz", "other.nii.gz", "scan.nii.gz"]
    single = plan_jobs(tmp_path / "scan.nrrd", tmp_path / "exact.nii.gz")
    assert single[0].output == tmp_path / "exact.nii.gz"
    dicom = shared_file("upper_abdomen_slab/dicom")
    assert plan_jobs(dicom, tmp_path / "o")[0].output.name == "dicom.nii.gz"


def test_output_that_would_overwrite_an_input_is_refused(tmp_path):
    _write_ct(tmp_path / "a.nii.gz", np.zeros((4, 4, 4), np.int16))
    _write_ct(tmp_path / "b_0000.nii.gz", np.zeros((4, 4, 4), np.int16))
    jobs = {j.case: j for j in plan_jobs(tmp_path, tmp_path)}
    assert "would overwrite an input" in jobs["a"].error
    assert jobs["b"].error is None  # b.nii.gz is not an input


def test_missing_empty_and_non_image_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        plan_jobs(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        plan_jobs(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: not an image file"):
        plan_jobs(tmp_path / "notes.txt", tmp_path / "o")


# ----------------------------------------------------------------------------- end to end


def test_cli_on_a_phantom_writes_header_exact_labels_and_a_full_report(tmp_path, tiny_model_dir):
    ct, _ = _phantom()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    geometry = _write_ct(inputs / "case_0000.nii.gz", ct, (5.0, 3.5, 3.5), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    before = _digest(inputs / "case_0000.nii.gz")
    code = cli(["predict", "-i", str(inputs), "-o", str(tmp_path / "out"), "-m", str(tiny_model_dir),
                "--report", str(tmp_path / "report.json"), "--qc", "--no-progress", "--device", "cpu"])
    assert code == 0
    out = tmp_path / "out" / "case.nii.gz"
    labels, out_geometry, _ = io.read_image(out)
    assert out_geometry.matches(geometry) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    report = json.loads((tmp_path / "report.json").read_text())
    case = report["cases"][0]
    assert case["status"] == "ok" and STAGES <= set(case["seconds"])
    assert case["localizer"]["spacing_mm"] >= 6.0 and case["peak_rss_bytes"] > 0
    assert set(case["organ_volumes_ml"]) == {"liver", "kidney", "spleen", "pancreas"}
    assert report["provenance"]["keras_backend"] == "tensorflow" and report["provenance"]["device"] == "cpu"
    assert len(report["provenance"]["weights_sha256"]["seg"]) == 64
    assert report["summary"]["memory"]["gpu_used_mib"] is None  # no GPU here: null, no exception
    assert case["memory"]["gpu_used_mib"] is None and case["memory"]["rss_bytes"]["max"] > 0
    assert (tmp_path / "out" / "qc" / "case.png").stat().st_size > 1000
    assert _digest(inputs / "case_0000.nii.gz") == before  # the input is never modified
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case.nii.gz", "qc"]


def test_cli_on_a_real_dicom_series(tmp_path, tiny_model_dir):
    dicom = shared_file("upper_abdomen_slab/dicom")
    code = cli(["predict", "-i", str(dicom), "-o", str(tmp_path / "slab.nii.gz"), "-m", str(tiny_model_dir),
                "--report", str(tmp_path / "r.json"), "--no-progress"])
    assert code == 0
    labels, geometry, _ = io.read_image(tmp_path / "slab.nii.gz")
    assert geometry.matches(io.read_ct(dicom).geometry) and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert STAGES <= set(json.loads((tmp_path / "r.json").read_text())["cases"][0]["seconds"])


def test_oracle_through_the_whole_pipeline_meets_the_thresholds(tmp_path):
    ct, labels = _phantom(seed=3, shape=(64, 128, 128), spacing=(4.0, 2.7, 2.7))
    geometry = Geometry(labels.shape, (4.0, 2.7, 2.7), (3.0, -7.0, 11.0), rotation_direction((0.15, -0.1, 0.25)))
    loc_config, seg_config = tiny_configs()
    from flare_seg.config import LocalizerConfig, SegmenterConfig

    segmenter = oracle_segmenter(labels, geometry, LocalizerConfig(), SegmenterConfig())
    result = segmenter.segment(ct, geometry)
    dsc = metrics.dice_per_label(result.labels, labels)
    assert dsc["liver"] >= 0.98 and dsc["kidney"] >= 0.96 and dsc["spleen"] >= 0.97 and dsc["pancreas"] >= 0.93, dsc
    assert result.report.segmenter.spacing_mm == pytest.approx(2.0)


def test_nothing_found_gives_all_background_and_a_note(tmp_path):
    air = np.full((20, 40, 40), -1000, np.int16)
    geometry = Geometry(air.shape, (5.0, 5.0, 5.0))
    from flare_seg.config import LocalizerConfig, SegmenterConfig

    segmenter = oracle_segmenter(np.zeros(air.shape, np.uint8), geometry, LocalizerConfig(), SegmenterConfig())
    result = segmenter.segment(air, geometry)
    assert not result.labels.any() and result.labels.shape == air.shape
    assert any("found no organ" in n for n in result.report.notes)


def test_segment_array_api(tiny_model_dir):
    ct, _ = _phantom(seed=1, shape=(32, 64, 64), spacing=(6.0, 5.0, 5.0))
    labels = segment(ct, (6.0, 5.0, 5.0), model_dir=tiny_model_dir)
    assert labels.shape == ct.shape and labels.dtype == np.uint8


# ----------------------------------------------------------------------------- bad input


def test_folder_run_reports_broken_cases_and_finishes_the_others(tmp_path, tiny_model_dir):
    inputs = tmp_path / "in"
    inputs.mkdir()
    ct, _ = _phantom(seed=2, shape=(32, 64, 64), spacing=(6.0, 5.0, 5.0))
    _write_ct(inputs / "good_0000.nii.gz", ct, (6.0, 5.0, 5.0))
    good = (inputs / "good_0000.nii.gz").read_bytes()
    (inputs / "truncated_0000.nii.gz").write_bytes(good[: len(good) // 3])
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(inputs / "flat_0000.nii.gz"))
    frame = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.int16))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(inputs / "fourd_0000.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True),
                    str(inputs / "rgb_0000.nii.gz"))
    nan = np.zeros((32, 64, 64), np.float32) - 1000
    nan[0, 0, :5] = np.nan
    _write_ct(inputs / "nan_0000.mha", nan, (6.0, 5.0, 5.0))
    _write_ct(inputs / "unit_0000.nii.gz", ct, (1.0, 1.0, 1.0))
    _write_ct(inputs / "thin_0000.nii.gz", ct[:3], (1.0, 0.8, 0.8))
    _write_ct(inputs / "air_0000.nii.gz", np.full((16, 32, 32), -1000, np.int16))
    out = tmp_path / "out"
    code = cli(["predict", "-i", str(inputs), "-o", str(out), "-m", str(tiny_model_dir), "--report",
                str(tmp_path / "r.json"), "--no-progress"])
    assert code == 1  # some cases failed ...
    records = {r["case"]: r for r in json.loads((tmp_path / "r.json").read_text())["cases"]}
    for broken in ("truncated", "flat", "fourd", "rgb"):
        assert records[broken]["status"] == "error" and broken in records[broken]["error"]
        assert "\n" not in records[broken]["error"] and not (out / f"{broken}.nii.gz").exists()
    for fine in ("good", "nan", "unit", "thin", "air"):  # ... and the others were written
        assert records[fine]["status"] == "ok", records[fine]
        assert (out / f"{fine}.nii.gz").exists()
    assert any("non-finite" in w for w in records["nan"]["warnings"])
    assert any("1x1x1 mm" in w for w in records["unit"]["warnings"])
    assert any("thin volume" in w for w in records["thin"]["warnings"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert (inputs / "good_0000.nii.gz").read_bytes() == good
    # --skip-existing resumes: nothing is recomputed
    code = cli(["predict", "-i", str(inputs), "-o", str(out), "-m", str(tiny_model_dir), "--skip-existing",
                "--report", str(tmp_path / "r2.json"), "--no-progress"])
    statuses = {r["case"]: r["status"] for r in json.loads((tmp_path / "r2.json").read_text())["cases"]}
    assert statuses["good"] == "skipped" and statuses["truncated"] == "error"


def test_unwritable_output_folder_fails_before_any_work(tmp_path, tiny_model_dir, monkeypatch):
    ct, _ = _phantom(seed=2, shape=(32, 64, 64), spacing=(6.0, 5.0, 5.0))
    _write_ct(tmp_path / "c_0000.nii.gz", ct)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    loaded = []
    monkeypatch.setattr(Segmenter, "load", classmethod(lambda cls, *a, **k: loaded.append(1)))
    code = cli(["predict", "-i", str(tmp_path / "c_0000.nii.gz"), "-o", str(blocker / "out"),
                "-m", str(tiny_model_dir)])
    assert code == 2 and not loaded


def test_corrupted_weights_are_refused(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "seg" / "model.weights.h5.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="sha256"):
        Segmenter.load(copy)
