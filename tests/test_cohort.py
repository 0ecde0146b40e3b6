"""Cohort runs on Dask: a real LocalCluster of 2 worker processes against a local run of the same cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from flare_seg import io  # noqa: E402
from flare_seg.cli.main import main as cli  # noqa: E402
from flare_seg.geometry import Geometry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cohort(folder: Path) -> None:
    from flare_seg.synth import phantom

    folder.mkdir()
    for seed in range(3):
        ct, _ = phantom.make_phantom(np.random.default_rng(seed), shape_zyx=(32, 64, 64), spacing_mm=(6.0, 5.0, 5.0))
        io.write_image(ct, Geometry(ct.shape, (6.0, 5.0, 5.0)), folder / f"case{seed}_0000.nii.gz")
    whole = (folder / "case0_0000.nii.gz").read_bytes()
    (folder / "broken_0000.nii.gz").write_bytes(whole[: len(whole) // 2])  # truncated: unreadable


def _local_run(inputs: Path, out: Path, model_dir: Path) -> int:
    """The reference: a plain local run in a fresh process, with the same network threads as the workers."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flare_seg.cli.main", "predict", "-i", str(inputs), "-o", str(out), "-m",
               str(model_dir), "--threads", "1", "--report", str(out / "report.json"), "--no-progress", "-q"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600).returncode


def test_local_cluster_of_two_workers_equals_a_local_run(tmp_path, tiny_model_dir):
    inputs = tmp_path / "inputs"
    _cohort(inputs)
    assert _local_run(inputs, tmp_path / "local", tiny_model_dir) == 1  # the broken case fails, the rest run
    args = ["predict", "-i", str(inputs), "-o", str(tmp_path / "dask"), "-m", str(tiny_model_dir), "--threads", "1",
            "--dask", "local:2", "--no-progress", "--report", str(tmp_path / "dask" / "report.json")]
    assert cli(args) == 1
    local = json.loads((tmp_path / "local" / "report.json").read_text())
    dask = json.loads((tmp_path / "dask" / "report.json").read_text())
    assert [(r["case"], r["status"]) for r in dask["cases"]] == [(r["case"], r["status"]) for r in local["cases"]]
    assert dask["summary"]["ok"] == 3 and dask["summary"]["failed"] == 1
    broken = next(r for r in dask["cases"] if r["case"] == "broken")
    assert "broken_0000.nii.gz" in broken["error"] and "truncated" in broken["error"]
    for seed in range(3):
        expected, geometry, _ = io.read_image(tmp_path / "local" / f"case{seed}.nii.gz")
        labels, dask_geometry, _ = io.read_image(tmp_path / "dask" / f"case{seed}.nii.gz")
        np.testing.assert_array_equal(labels, expected)
        assert dask_geometry.mismatch(geometry) is None
    workers = dask["provenance"]["dask"]["workers"]
    assert len(workers) == 2 and all(w["model_loads"] == 1 for w in workers.values())  # once per worker
    assert sum(w["cases"] for w in workers.values()) == 4  # 3 cases + the broken one, one task each
    assert dask["provenance"]["weights_sha256"] == local["provenance"]["weights_sha256"]
    # a rerun resumes: the written cases are skipped (with the broken input removed, nothing is left to
    # run, so no cluster is even started)
    (inputs / "broken_0000.nii.gz").unlink()
    assert cli(args + ["--skip-existing"]) == 0
    rerun = json.loads((tmp_path / "dask" / "report.json").read_text())
    assert [(r["case"], r["status"]) for r in rerun["cases"]] == [(f"case{s}", "skipped") for s in range(3)]


def test_bad_dask_address_is_a_clear_error(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    io.write_image(np.zeros((4, 8, 8), np.int16), Geometry((4, 8, 8), (2.0, 1.0, 1.0)), inputs / "a_0000.nii.gz")
    assert cli(["predict", "-i", str(inputs), "-o", str(tmp_path / "o"), "--dask", "local:zero"]) == 2
    assert "expected local:N" in capsys.readouterr().err
