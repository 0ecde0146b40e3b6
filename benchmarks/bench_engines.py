#!/usr/bin/env python3
"""Engine x precision x CT size: cold wall, warm wall, peak RSS, label agreement with TensorFlow fp32.

    python benchmarks/bench_engines.py --sizes 134 300 --engines tensorflow openvino onnxruntime \
        --precisions fp32 bf16 --json bench_engines.json

Each run is one fresh ``flare-seg predict`` process on a folder holding the same phantom twice
(512x512xN at 0.8x0.8x2.5 mm, the bundled weights): *cold* is the process's wall time for the
first case (start, imports, model loading and first-call compilation included, measured from
outside), *warm* the second case's own time in its report; *peak RSS* the whole process's
(``VmHWM``). Agreement is the share of voxels whose label equals the TensorFlow fp32 run's.
A combination an engine does not support (ONNX Runtime bf16/fp16) is skipped.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# VmHWM of the child's own image: ru_maxrss would carry this driver's peak across the exec.
CHILD = ("import re, sys\nfrom flare_seg.cli.main import main\nrc = main(sys.argv[1:])\n"
         "print('MAXRSS_KB', re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))\n"
         "sys.exit(rc)\n")


def make_case(n_z: int, folder: Path) -> Path:
    from flare_seg import io
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom

    path = folder / f"phantom{n_z}_0000.nii.gz"
    if not path.exists():
        ct, _ = phantom.make_phantom(np.random.default_rng(2024), shape_zyx=(n_z, 512, 512),
                                     spacing_mm=(2.5, 0.8, 0.8))
        io.write_image(ct, Geometry(ct.shape, (2.5, 0.8, 0.8)), path)
    return path


def run(case: Path, engine: str, precision: str, work: Path) -> dict:
    inputs, out = work / "in", work / "out"
    inputs.mkdir(parents=True, exist_ok=True)
    for name in ("a_0000.nii.gz", "b_0000.nii.gz"):
        if not (inputs / name).exists():
            os.symlink(case, inputs / name)
    cmd = [sys.executable, "-c", CHILD, "predict", "-q", "-i", str(inputs), "-o", str(out), "--engine", engine,
           "--precision", precision, "--device", "cpu", "--report", str(work / "report.json"), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    report = json.loads((work / "report.json").read_text())
    first, second = report["cases"]
    return {"cold_wall_s": round(wall - second["seconds_total"], 2), "warm_wall_s": second["seconds_total"],
            "model_load_s": report["summary"]["model_load_seconds"], "first_case_s": first["seconds_total"],
            "peak_rss_mb": round(int(proc.stdout.split("MAXRSS_KB")[-1].split()[0]) / 1024),
            "grids": [first["localizer"]["input_shape_zyx"], first["segmenter"]["input_shape_zyx"]],
            "precision_used": report["provenance"]["engine"].get("inference_precision"),
            "labels": str(out / "a.nii.gz")}


def agreement(path_a: str, path_b: str) -> float:
    from flare_seg import io

    a, _, _ = io.read_image(path_a)
    b, _, _ = io.read_image(path_b)
    return float(np.mean(a == b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[134, 300, 600])
    p.add_argument("--engines", nargs="+", default=["tensorflow", "openvino", "onnxruntime"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--cases", type=Path, default=Path(tempfile.gettempdir()) / "flare_seg_bench_cases")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.cases.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_z in args.sizes:
        case = make_case(n_z, args.cases)
        reference = None
        for engine in args.engines:
            for precision in args.precisions:
                if engine == "onnxruntime" and precision != "fp32":
                    continue
                with tempfile.TemporaryDirectory() as work:
                    row = {"size": f"512x512x{n_z}", "engine": engine, "precision": precision,
                           **run(case, engine, precision, Path(work))}
                    if "labels" in row:
                        if engine == "tensorflow" and precision == "fp32":
                            reference = Path(args.cases) / f"tf_fp32_{n_z}.nii.gz"
                            os.replace(row["labels"], reference)
                        row["agreement_with_tf_fp32"] = (round(agreement(row["labels"], reference), 6)
                                                         if reference and Path(row["labels"]).exists() else 1.0)
                        row.pop("labels")
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        from flare_seg.atomic import write_text

        write_text(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
