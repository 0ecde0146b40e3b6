#!/usr/bin/env python3
"""Cohort throughput on Dask: cases per minute with 1 and 2 local workers, against a local run.

    python benchmarks/bench_cohort.py [--cases 6] [--workers 1 2] [--model-dir weights]

Writes phantom CTs (64x160x160 at 2.5 mm) to a temporary folder and runs the real CLI on them:
once locally (``flare-seg predict``, one process), then with ``--dask local:N``. Cases per minute
count only the cases (from the first task start to the last end is not visible from here, so the
wall time of the run minus its model load is used); the overhead per case is
(cluster wall - cluster load) / cases - (local wall - local load) / cases.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _cases(folder: Path, count: int) -> None:
    from flare_seg import io
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom

    folder.mkdir()
    for seed in range(count):
        ct, _ = phantom.make_phantom(np.random.default_rng(seed), shape_zyx=(64, 160, 160), spacing_mm=(2.5, 2.5, 2.5))
        io.write_image(ct, Geometry(ct.shape, (2.5, 2.5, 2.5)), folder / f"case{seed:02d}_0000.nii.gz")


def _run(inputs: Path, out: Path, extra: list[str], model_dir: str | None) -> dict:
    command = [sys.executable, "-m", "flare_seg.cli.main", "predict", "-i", str(inputs), "-o", str(out),
               "--report", str(out / "report.json"), "--no-progress", "-q", *extra]
    command += ["-m", model_dir] if model_dir else []
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = json.loads((out / "report.json").read_text())["summary"]
    busy = summary["wall_seconds"] - summary["model_load_seconds"]
    return {"wall_s": summary["wall_seconds"], "load_s": summary["model_load_seconds"], "busy_s": busy,
            "cases": summary["ok"], "cases_per_min": 60 * summary["ok"] / busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model-dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        _cases(inputs, args.cases)
        local = _run(inputs, Path(tmp) / "local", [], args.model_dir)
        print(f"local      {local}")
        for n in args.workers:
            result = _run(inputs, Path(tmp) / f"dask{n}", ["--dask", f"local:{n}"], args.model_dir)
            overhead = result["busy_s"] / result["cases"] - local["busy_s"] / local["cases"]
            print(f"local:{n}    {result}  overhead per case {overhead:+.2f} s (negative: workers overlap)")


if __name__ == "__main__":
    main()
