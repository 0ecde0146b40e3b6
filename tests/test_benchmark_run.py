"""``flare-seg benchmark-run``: one case alone per fresh process, timed and sampled; CPU-only here."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from flare_seg.evaluation import benchmark_run
from flare_seg.instrument import NvmlProbe

#: The "model": checks that its input folder holds exactly one image, holds 48 MiB for a moment,
#: copies the image to <output>/<case>.nii.gz; exits 3 without writing for the case named "bad".
COPY_SCRIPT = """
import pathlib, shutil, sys, time
inputs = sorted(pathlib.Path(sys.argv[1]).iterdir())
if len(inputs) != 1:
    sys.exit(f"expected one input, got {[p.name for p in inputs]}")
if sys.argv[3] == "bad":
    print("model failed on purpose", flush=True)
    sys.exit(3)
block = bytearray(48 * 2**20)
block[::4096] = b"x" * len(block[::4096])
time.sleep(0.35)
shutil.copyfile(inputs[0], pathlib.Path(sys.argv[2]) / (sys.argv[3] + ".nii.gz"))
"""


def command(script: Path) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{input}} {{output}} {{case}}"


@pytest.fixture
def inputs(tmp_path) -> Path:
    from flare_seg.geometry import Geometry
    from flare_seg.io import write_image

    folder = tmp_path / "in put"  # a space: arguments must survive it
    folder.mkdir()
    for case in ("case_a", "case_b"):
        write_image(np.zeros((4, 8, 8), np.int16), Geometry((4, 8, 8), (2.5, 0.8, 0.8)), folder / f"{case}_0000.nii.gz")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "copy_model.py"
    path.write_text(COPY_SCRIPT)
    return path


def test_build_command_substitutes_per_word():
    argv = benchmark_run.build_command("python -c 'print({1: 2})' --in={input} {output}/x {case}",
                                       Path("/tmp/a b"), Path("/out"), "c1")
    assert argv == ["python", "-c", "print({1: 2})", "--in=/tmp/a b", "/out/x", "c1"]
    with pytest.raises(ValueError, match="cannot split"):
        benchmark_run.build_command("python 'unclosed", Path("/a"), Path("/b"), "c")


def test_run_benchmark_one_case_at_a_time(inputs, script, tmp_path):
    out = tmp_path / "out"
    records = benchmark_run.run_benchmark(command(script), inputs, out, interval_s=0.05)
    assert [r["case"] for r in records] == ["case_a", "case_b"]
    for record in records:
        assert record["exit_code"] == 0 and record["output_present"] and not record["timed_out"]
        assert (out / f"{record['case']}.nii.gz").read_bytes() == (inputs / record["input"]).read_bytes()
        assert record["seconds"] >= 0.35  # includes the child's 0.35 s sleep (no bound above: load varies)
        assert record["samples"] >= 3 and len(record["series"]["t_s"]) == record["samples"]
        assert record["rss_max_mib"] >= 48  # the child's 48 MiB block, seen through its pid
        assert record["rss_stable_max_mib"] <= record["rss_max_mib"]
        if not NvmlProbe().available:  # this machine: no GPU, GPU fields null
            assert record["gpu_max_mib"] is None and record["gpu_stable_max_mib"] is None
            assert record["gpu_area_mib_s"] is None and record["series"]["gpu_used_mib"] is None
    # Running again into the same folder: the outputs are rewritten, hence present again.
    again = benchmark_run.run_benchmark(command(script), inputs, out, interval_s=0.05)
    assert all(r["output_present"] for r in again)


def test_failing_case_is_recorded_and_cli_exits_non_zero(inputs, script, tmp_path, capsys):
    from flare_seg.cli.main import main

    (inputs / "case_b_0000.nii.gz").rename(inputs / "bad_0000.nii.gz")
    out_json, out_csv, out_png = tmp_path / "runs.json", tmp_path / "runs.csv", tmp_path / "mem.png"
    code = main(["benchmark-run", "--cmd", command(script), "--inputs", str(inputs), "--json", str(out_json),
                 "--csv", str(out_csv), "--plot", str(out_png), "--interval", "0.05"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "case_a" in printed and "failed 1" in printed
    document = json.loads(out_json.read_text())
    bad = next(r for r in document["cases"] if r["case"] == "bad")
    assert bad["exit_code"] == 3 and not bad["output_present"] and "failed on purpose" in bad["log_tail"]
    assert document["summary"]["cases"] == 2 and document["summary"]["failed"] == 1
    with out_csv.open() as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert rows["case_a"]["exit_code"] == "0" and rows["case_a"]["output_present"] == "True"
    assert float(rows["case_a"]["seconds"]) >= 0.35 and "series" not in rows["case_a"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeout_kills_the_run(inputs, tmp_path):
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(30)\n")
    (inputs / "case_b_0000.nii.gz").unlink()
    records = benchmark_run.run_benchmark(f"{shlex.quote(sys.executable)} {shlex.quote(str(slow))} {{input}}",
                                          inputs, tmp_path / "out", interval_s=0.05, timeout_s=0.5)
    assert records[0]["timed_out"] and records[0]["exit_code"] != 0
    assert records[0]["seconds"] < 30  # killed: it ended before its own 30 s sleep


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder"):
        benchmark_run.list_inputs(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        benchmark_run.list_inputs(tmp_path)
    (tmp_path / "x_0000.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot start command"):
        benchmark_run.run_benchmark("/nonexistent/model {input}", tmp_path, tmp_path / "out")
