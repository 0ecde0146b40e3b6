#!/usr/bin/env python3
"""Inference benchmark: per-stage seconds, share outside the two forward passes, peak RSS, GFLOP/s.

    python benchmarks/bench_predict.py                 # all cases, each in a fresh process
    python benchmarks/bench_predict.py --case slab     # one case in this process

Cases: a 512x512x200 phantom at 0.8x0.8x2.5 mm, a 512x512x300 one (the RSS target), and the real
upper-abdomen slab (examples/). Each case runs twice in a warm process; the second run is reported
(the first traces the networks for that input size). ``peak_rss_mb`` is the peak RSS during that
second run (the peak is reset after building the input, Linux only); ``rss_before_case_mb`` is what
the process held before it (runtime, models, the input volume); ``peak_rss_process_mb`` the whole
process's peak, phantom generation included.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = {"phantom200": (200, 512, 512), "phantom300": (300, 512, 512), "slab": None}
FORWARD = ("loc_predict", "seg_predict")


def _volume(case: str):
    from flare_seg import io
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom

    if case == "slab":
        volume = io.read_ct(ROOT / "examples" / "upper_abdomen_slab_0000.nii.gz")
        return volume.array, volume.geometry
    ct, _ = phantom.make_phantom(np.random.default_rng(2024), shape_zyx=CASES[case], spacing_mm=(2.5, 0.8, 0.8))
    return ct, Geometry(ct.shape, (2.5, 0.8, 0.8))


def run_case(case: str, model_dir) -> dict:
    from flare_seg.flops import conv_flops
    from flare_seg.instrument import StageTimer, peak_rss_bytes, process_tree_rss_bytes, reset_peak_rss
    from flare_seg.predict import Segmenter

    array, geometry = _volume(case)
    segmenter = Segmenter.load(model_dir, device="cpu", engine="tensorflow")  # FLOPs need the Keras model
    segmenter.segment(array, geometry)  # warm-up: traces both networks for these sizes
    rss_before = process_tree_rss_bytes(include_children=False)  # runtime + models + input volume
    peak_before = peak_rss_bytes()  # phantom generation and the warm-up run
    reset_ok = reset_peak_rss()  # so the peak is this case's, not the phantom generation's
    timer = StageTimer()
    result = segmenter.segment(array, geometry, timer=timer)
    peak = peak_rss_bytes()
    seconds = timer.as_dict()
    total = timer.total()
    grids = {"localizer": result.report.localizer, "segmenter": result.report.segmenter}
    gflop = {net: conv_flops(model.model, tuple(grids[key].input_shape_zyx)) / 1e9
             for net, model, key in (("loc", segmenter.loc, "localizer"), ("seg", segmenter.seg, "segmenter"))
             if grids[key] is not None}
    return {"case": case, "shape_zyx": list(array.shape), "seconds": seconds, "total_s": round(total, 3),
            "outside_forward_share": round(1 - sum(seconds.get(k, 0) for k in FORWARD) / total, 3),
            "gflop": {k: round(v, 1) for k, v in gflop.items()},
            "gflop_per_s": {net: round(g / seconds[f"{net}_predict"], 1) for net, g in gflop.items()},
            "grids": {k: g.input_shape_zyx for k, g in grids.items() if g is not None},
            "input_mb": round(array.nbytes / 2**20), "rss_before_case_mb": round(rss_before / 2**20),
            "peak_rss_mb": round(peak / 2**20) if reset_ok else None,
            "peak_rss_process_mb": round(max(peak, peak_before) / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES))
    parser.add_argument("--model-dir", type=Path)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model_dir)))
        return
    rows = []
    for case in CASES:
        cmd = [sys.executable, __file__, "--case", case]
        cmd += ["--model-dir", str(args.model_dir)] if args.model_dir else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    stages = list(rows[0]["seconds"])
    print("| stage (s) | " + " | ".join(r["case"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for stage in stages + ["total_s"]:
        values = [r["seconds"].get(stage, 0.0) if stage != "total_s" else r["total_s"] for r in rows]
        print(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    for key in ("outside_forward_share", "input_mb", "rss_before_case_mb", "peak_rss_mb", "peak_rss_process_mb",
                "grids", "gflop", "gflop_per_s"):
        print(f"| {key} | " + " | ".join(str(r[key]) for r in rows) + " |")


if __name__ == "__main__":
    main()
