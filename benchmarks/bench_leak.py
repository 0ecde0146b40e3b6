#!/usr/bin/env python3
"""Leak check of a long folder run: RSS after each of N cases of a real ``run_jobs`` folder run.

    python benchmarks/bench_leak.py                    # 30 cases, bundled weights
    python benchmarks/bench_leak.py --cases 30 --model-dir weights --json leak.json
    python benchmarks/bench_leak.py --tiny             # tiny random networks: the pipeline's own memory

The cases are small phantoms of three sizes in turn (so every network graph exists after the third
case; a leak is growth beyond that). It prints the process RSS after every case and the ratio of
RSS after the last case to RSS after the third; the target is at most 1.05.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES_ZYX = ((40, 96, 96), (48, 112, 96), (36, 96, 112))
SPACING_MM = (5.0, 3.0, 3.0)


def write_cases(folder: Path, count: int) -> None:
    from flare_seg import io
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom

    for i in range(count):
        shape = SHAPES_ZYX[i % len(SHAPES_ZYX)]
        ct, _ = phantom.make_phantom(np.random.default_rng([2026, i]), shape_zyx=shape, spacing_mm=SPACING_MM)
        io.write_image(ct, Geometry(shape, SPACING_MM), folder / f"leak{i:03d}_0000.nii.gz")


def write_tiny_models(root: Path) -> Path:
    """loc/ and seg/ with randomly initialised small networks (the tests' configs), sha256 files."""
    import keras

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_configs

    from flare_seg import atomic
    from flare_seg.config import save_config
    from flare_seg.models import build_model
    from flare_seg.predict import sha256_of

    keras.utils.set_random_seed(0)
    for name, config in zip(("loc", "seg"), tiny_configs(), strict=True):
        (root / name).mkdir()
        save_config(config, root / name / "config.json")
        build_model(config).save_weights(root / name / "model.weights.h5")
        atomic.write_text(root / name / "model.weights.h5.sha256", sha256_of(root / name / "model.weights.h5") + "\n")
    return root


def measure(count: int, model_dir) -> dict:
    from flare_seg import predict
    from flare_seg.instrument import process_tree_rss_bytes

    rss_mib: list[float] = []
    real_run_one = predict._run_one

    def run_one_and_sample(*args, **kwargs):  # RSS once the case is done and its arrays are released
        record = real_run_one(*args, **kwargs)
        rss_mib.append(process_tree_rss_bytes(include_children=False) / 2**20)
        print(f"case {len(rss_mib):3d}: RSS {rss_mib[-1]:8.1f} MiB", flush=True)
        return record

    predict._run_one = run_one_and_sample
    with tempfile.TemporaryDirectory(prefix="flare-seg-leak-") as work:
        inputs, outputs = Path(work) / "in", Path(work) / "out"
        inputs.mkdir()
        outputs.mkdir()
        write_cases(inputs, count)
        segmenter = predict.Segmenter.load(model_dir, device="cpu")
        records = predict.run_jobs(segmenter, predict.plan_jobs(inputs, outputs), progress=False)
    failed = [r["case"] for r in records if r["status"] != "ok"]
    return {"cases": count, "failed": failed, "rss_mib_after_case": [round(v, 1) for v in rss_mib],
            "rss_mib_after_third": round(rss_mib[2], 1), "rss_mib_after_last": round(rss_mib[-1], 1),
            "last_over_third": round(rss_mib[-1] / rss_mib[2], 4)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--model-dir", type=Path, help="loc/ + seg/ (default: bundled weights)")
    p.add_argument("--tiny", action="store_true", help="tiny random networks (as the tests use) instead")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.cases < 4:
        p.error("--cases must be at least 4")
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="flare-seg-tiny-") as tiny:
        model_dir = write_tiny_models(Path(tiny)) if args.tiny else args.model_dir
        result = measure(args.cases, model_dir)
    result["networks"] = "tiny random" if args.tiny else str(args.model_dir or "bundled")
    print(f"RSS after the last case / after the third: {result['last_over_third']:.4f} (target <= 1.05); "
          f"failed cases: {len(result['failed'])}")
    if args.json:
        from flare_seg import atomic

        atomic.write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0 if result["last_over_third"] <= 1.05 and not result["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
