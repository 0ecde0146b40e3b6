#!/usr/bin/env python3
"""Seed 001's presence head on field-of-view-cut phantoms: does it suppress organs that are not there?

Two segmenters train on the *same* phantoms for the same steps with the same seed and settings,
one without and one with the presence head (``SegmenterConfig.presence_head``); or ``--models
BASE HEAD`` takes two trained segmenter folders. The training phantoms look at random parts of
the body (the view's centre is shifted by up to +-250 mm in z and +-100 mm in x), so the head sees
chest-only, pelvis-only and cut organs as well as whole abdomens.

Each segmenter then runs on the *whole view* of held-out phantoms (box = the whole image, as if
the localizer had returned everything: the worst case for organs that are absent, and independent
of any localizer), for each named view (abdomen, chest-only, pelvis-only, organs cut at the upper
and the lateral border), and on the shared real negatives (``chest_above_diaphragm``, a head/neck
CT) when ``../shared/data`` has them. An organ is *absent* from a view when less than 0.5 ml of it
is inside (the training target's rule). Scored on the input grid:

* false-positive volume (ml): the predicted volume of absent organs, summed over them;
* DSC of present organs (mean over organs and phantoms);
* with the head: its mean probability for absent and for present organs.

Writes a markdown table (``--doc``) and the raw numbers (``OUT/results.json``).

    nice -n 10 python benchmarks/bench_presence.py --out /tmp/presence_bench --doc docs/presence.md  # full size
    python benchmarks/bench_presence.py --out /tmp/p --smoke          # smallest setting: proves it runs

(In a git worktree, pass ``--shared-data`` to the shared data folder: the default is ``../shared/data``
beside the checkout.)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("bench_presence")

#: Named evaluation views: the view centre's shift (z, y, x) in mm in the phantom's anatomy frame.
VIEWS = {"abdomen": (0.0, 0.0, 0.0), "chest-only": (230.0, 0.0, 0.0), "pelvis-only": (-230.0, 0.0, 0.0),
         "cut at upper border": (110.0, 0.0, 0.0), "cut at lateral border": (0.0, 0.0, 130.0)}
TRAIN_STREAM, EVAL_STREAM = 11, 12
ABSENT_ML = 0.5
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_NEGATIVES = {"real chest above diaphragm": "chest_out_of_domain/chest_above_diaphragm.nii.gz",
                  "real head/neck": "head_neck_negative/totalseg_s0003_ct.nii.gz"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (runs, results.json)")
    p.add_argument("--doc", type=Path, help="write the markdown table here")
    p.add_argument("--models", type=Path, nargs=2, metavar=("BASE", "HEAD"),
                   help="two trained segmenter folders (config.json + model.weights.h5) instead of training")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--train", type=int, default=24, help="training phantoms")
    p.add_argument("--per-view", type=int, default=3, help="held-out phantoms per view")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 160, 160), help="phantom array (z y x)")
    p.add_argument("--phantom-spacing", type=float, nargs=3, default=(5.0, 2.5, 2.5), help="phantom spacing mm")
    p.add_argument("--spacing", type=float, default=4.0, help="segmenter grid spacing (mm)")
    p.add_argument("--crop", type=int, nargs=3, default=(64, 64, 64), help="training crop (z y x)")
    p.add_argument("--local-filters", type=int, default=16)
    p.add_argument("--local-levels", type=int, default=4)
    p.add_argument("--spatial-filters", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="backend compute threads")
    p.add_argument("--shared-data", type=Path, default=SHARED,
                   help=f"the shared data folder with the real negatives (default {SHARED})")
    p.add_argument("--smoke", action="store_true",
                   help="smallest setting (2 steps, tiny nets and phantoms): proves the script runs, measures nothing")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.train, args.per_view = 2, 3, 1
        args.shape, args.phantom_spacing, args.spacing = (32, 40, 40), (10.0, 10.0, 10.0), 12.0
        args.crop, args.local_filters, args.local_levels, args.spatial_filters = (32, 32, 32), 4, 3, 4
    return args


def seg_config(args, presence_head: bool):
    from flare_seg.config import NetworkConfig, SegmenterConfig, replace

    config = SegmenterConfig(presence_head=presence_head)
    grid = replace(config.preprocess.grid, spacing_mm=float(args.spacing))
    return replace(config, local=NetworkConfig(levels=args.local_levels, filters=args.local_filters),
                   spatial=NetworkConfig(levels=min(4, args.local_levels), filters=args.spatial_filters),
                   preprocess=replace(config.preprocess, grid=grid))


def phantom(args, stream: int, index: int, shift_mm):
    """``(ct_hu, labels, spacing_mm)`` of one phantom viewed at ``shift_mm`` (canonical orientation)."""
    from flare_seg.synth.phantom import make_phantom

    rng = np.random.default_rng([args.seed, stream, index])
    ct, labels = make_phantom(rng, shape_zyx=tuple(args.shape), spacing_mm=tuple(args.phantom_spacing),
                              field_of_view_shift_mm=tuple(shift_mm))
    return ct, labels, tuple(float(s) for s in args.phantom_spacing)


def training_cases(args):
    """Phantoms at random views: whole abdomens, chest-only, pelvis-only and everything between."""
    from flare_seg.geometry import Geometry
    from flare_seg.training.data import make_case

    cases = []
    for i in range(args.train):
        view = np.random.default_rng([args.seed, TRAIN_STREAM, i, 1])
        shift = (view.uniform(-250.0, 250.0), 0.0, view.uniform(-100.0, 100.0))
        ct, labels, spacing = phantom(args, TRAIN_STREAM, i, shift)
        cases.append(make_case(f"view_{i:03d}", ct, labels, Geometry(ct.shape, spacing)))
    return cases


def train_pair(args) -> tuple[Path, Path]:
    """Train the baseline and the head on the same phantoms, steps, seed and settings."""
    from flare_seg.config import AugmentConfig, TrainConfig
    from flare_seg.training.loop import RunPaths, find_checkpoint, train

    cfg = TrainConfig(steps=args.steps, learning_rate=args.lr, seed=args.seed, train_size_zyx=tuple(args.crop),
                      checkpoint_every=args.steps, validate_every=args.steps, augment=AugmentConfig(enabled=False))
    cases = None
    runs = []
    for name, head in (("base", False), ("head", True)):
        run = args.out / name
        runs.append(run)
        if find_checkpoint(RunPaths(run)) is not None:
            log.info("%s: trained already, reused", run)
            continue
        cases = cases if cases is not None else training_cases(args)
        t0 = time.perf_counter()
        train(seg_config(args, head), cfg, cases, run, progress=False)
        log.info("%s: %d steps in %.0f s", run, args.steps, time.perf_counter() - t0)
    return runs[0], runs[1]


def whole_view(model, image_hu, spacing_mm) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels on the input grid from the segmenter on the whole image, and the head's probabilities."""
    from flare_seg.predict import presence_probabilities
    from flare_seg.preprocess import clamp_padding, seg_input, to_input_grid

    box = ((0, 0, 0), tuple(n - 1 for n in image_hu.shape))
    x, record = seg_input(clamp_padding(image_hu), spacing_mm, box, model.config.preprocess)
    out = model.predict(x[None, ..., None])
    presence = out.get("presence")
    q = None if presence is None else np.array(list(presence_probabilities(presence[0]).values()))
    return to_input_grid(out["prob"][0], record), q


def score_view(model, image_hu, labels, spacing_mm) -> dict:
    """False-positive ml of absent organs, DSC per present organ, the head's probabilities."""
    from flare_seg.evaluation.metrics import dice
    from flare_seg.labels import ORGANS

    pred, q = whole_view(model, image_hu, spacing_mm)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    truth_ml = {o: float(np.count_nonzero(labels == o)) * voxel_ml for o in ORGANS}
    absent = [o for o in ORGANS if truth_ml[o] < ABSENT_ML]
    present = [o for o in ORGANS if o not in absent]
    result = {"fp_ml": sum(float(np.count_nonzero(pred == o)) * voxel_ml for o in absent),
              "dsc": {int(o): dice(pred == o, labels == o) for o in present},
              "absent": [int(o) for o in absent]}
    if q is not None:
        result["q_absent"] = [float(q[o - 1]) for o in absent]
        result["q_present"] = [float(q[o - 1]) for o in present]
    return result


def evaluate(model, args) -> dict:
    results = {}
    for v, (view, shift) in enumerate(VIEWS.items()):
        results[view] = []
        for i in range(args.per_view):
            ct, labels, spacing = phantom(args, EVAL_STREAM, v * 1000 + i, shift)
            results[view].append(score_view(model, ct, labels, spacing))
    for name, relative in REAL_NEGATIVES.items():
        path = args.shared_data / relative
        if not path.exists():
            log.warning("%s not found: %s left out", path, name)
            continue
        from flare_seg import io
        from flare_seg.geometry import to_canonical

        volume = io.read_ct(path)
        image, geometry, _ = to_canonical(volume.array, volume.geometry)
        results[name] = [score_view(model, image, np.zeros(image.shape, np.uint8), geometry.spacing_mm)]
    return results


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(results: dict) -> dict:
    """Per view: mean FP ml, mean DSC of present organs, the head's mean probabilities."""
    out = {}
    for view, cases in results.items():
        out[view] = {"fp_ml": _mean([c["fp_ml"] for c in cases]),
                     "dsc": _mean([d for c in cases for d in c["dsc"].values()]),
                     "absent_organs": _mean([len(c["absent"]) for c in cases]),
                     "q_absent": _mean([q for c in cases for q in c.get("q_absent", [])]),
                     "q_present": _mean([q for c in cases for q in c.get("q_present", [])])}
    return out


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(base: dict, head: dict, args) -> str:
    lines = ["| view | absent organs | FP ml, base | FP ml, head | DSC present, base | DSC present, head | "
             "head p(absent) | head p(present) |", "|---|---|---|---|---|---|---|---|"]
    for view in base:
        b, h = base[view], head[view]
        lines.append(f"| {view} | {_fmt(b['absent_organs'], 1)} | {_fmt(b['fp_ml'], 1)} | {_fmt(h['fp_ml'], 1)} | "
                     f"{_fmt(b['dsc'])} | {_fmt(h['dsc'])} | {_fmt(h['q_absent'])} | {_fmt(h['q_present'])} |")
    setting = (f"{args.steps} steps, {args.train} training phantoms, {args.per_view} held-out phantom(s) per view, "
               f"segmenter grid {args.spacing} mm, local net {args.local_levels} levels x {args.local_filters} "
               f"filters, crop {tuple(args.crop)}, seed {args.seed}" if args.models is None else
               f"models {args.models[0]} and {args.models[1]}, {args.per_view} phantom(s) per view")
    return "\n".join(["# Presence head (seed 001) on field-of-view-cut phantoms", "",
                      f"`benchmarks/bench_presence.py`: {setting}. Whole view as the segmenter's box; absent = "
                      f"< {ABSENT_ML} ml inside the view. FP ml: predicted volume of absent organs (mean per case).",
                      "", *lines, ""])


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    from flare_seg import runtime
    from flare_seg.config import SegmenterConfig
    from flare_seg.predict import load_model

    runtime.configure_training(threads=args.threads, deterministic=True)
    args.out.mkdir(parents=True, exist_ok=True)
    base_dir, head_dir = args.models if args.models is not None else train_pair(args)
    models = [load_model(d, SegmenterConfig) for d in (base_dir, head_dir)]
    if models[0].config.presence_head or not models[1].config.presence_head:
        raise SystemExit(f"expected {base_dir} without and {head_dir} with the presence head")
    raw = {name: evaluate(model, args) for name, model in zip(("base", "head"), models, strict=True)}
    summary = {name: summarise(r) for name, r in raw.items()}
    (args.out / "results.json").write_text(json.dumps({"summary": summary, "cases": raw}, indent=2) + "\n")
    text = table(summary["base"], summary["head"], args)
    if args.doc is not None:
        from flare_seg.atomic import write_text

        write_text(args.doc, text)
    log.info("results\n%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
