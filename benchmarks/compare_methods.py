#!/usr/bin/env python3
"""The seeds' methods side by side (``docs/comparison.md``): SCN, plain U-Net, attention U-Net, SCN +
anatomical attention; and the partial-label demonstration (seed 001).

Every row trains the *same* data (phantoms from seed stream ``TRAIN_STREAM``), for the same steps,
with the same seed, crop size and training settings, from a random initialisation; then each is
run through the whole pipeline (the bundled localizer finds the box, the trained segmenter
segments it, labels go back on the input grid) on held-out phantoms (seed stream ``VAL_STREAM``)
and on the shared real CTs (``amos_0018``, manual labels; the slab, TotalSegmentator pseudo
labels, no kidney), and scored with :mod:`flare_seg.evaluation.metrics` (DSC, NSD at 1 mm,
precision, recall, far false positives). Parameters and GFLOP are counted at 160x128x160; CPU
forward time and peak RSS are measured at that size in a fresh process per architecture.

    nice -n 10 python benchmarks/compare_methods.py --out /tmp/compare --steps 150 --doc docs/comparison.md
    python benchmarks/compare_methods.py --out /tmp/fwd --part forward --doc docs/comparison.md  # idle machine
    python benchmarks/compare_methods.py --forward SCN     # (internal) one forward pass, JSON on stdout

``--doc`` replaces only the sections this run (or ``--render``) has rows for, each between its own
markers, so a longer partial-label run or an idle-machine forward run leaves the other sections and
the prose as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flare_seg.instrument import cpu_description

log = logging.getLogger("compare_methods")

ROWS = {"SCN": {}, "U-Net": {"architecture": "unet"}, "attention U-Net": {"architecture": "attention_unet"},
        "SCN + anatomical attention": {"anatomical_attention": True}}
FORWARD_SIZE = (160, 128, 160)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_DATA = [SHARED]  # --shared-data replaces it


def seg_config(**changes):
    """The deployed (paper-size) segmenter config of a row."""
    from flare_seg.config import SegmenterConfig, replace

    return replace(SegmenterConfig(), **changes)


def trained_config(args, **changes):
    """The config the CPU can train here: the row's architecture at reduced width and a coarser grid."""
    from flare_seg.config import NetworkConfig, replace

    config = seg_config(**changes)
    grid = replace(config.preprocess.grid, spacing_mm=float(args.spacing))
    return replace(config, local=NetworkConfig(levels=args.local_levels, filters=args.local_filters),
                   spatial=NetworkConfig(levels=4, filters=args.spatial_filters),
                   preprocess=replace(config.preprocess, grid=grid))


def forward(name: str, threads: int | None) -> dict:
    """One architecture's forward pass at FORWARD_SIZE (compile, then the median of 2 timed passes)."""
    from flare_seg.models import build_model, count_params
    from flare_seg.runtime import compiled_predictor, configure_device

    configure_device("cpu", threads=threads)
    config = seg_config(**ROWS[name])
    model = build_model(config)
    predict = compiled_predictor(model)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *FORWARD_SIZE, config.input_channels)).astype("float32")
    predict(x)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return {"params": count_params(model), "forward_s": float(np.median(times)),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def train_cases(args):
    from flare_seg.training.synthetic import TRAIN_STREAM, VAL_STREAM, SyntheticSpec, synthetic_cases

    spec = SyntheticSpec()
    train = synthetic_cases(args.train, args.seed, TRAIN_STREAM, spec)
    held = synthetic_cases(args.heldout, args.seed, VAL_STREAM, spec)
    return train, held


def train_config(args):
    from flare_seg.config import AugmentConfig, TrainConfig

    return TrainConfig(steps=args.steps, learning_rate=args.lr, clipnorm=args.clipnorm, seed=args.seed,
                       train_size_zyx=tuple(args.crop), checkpoint_every=args.checkpoint_every or args.steps,
                       validate_every=args.steps,
                       augment=AugmentConfig(enabled=args.augment))


def train_row(run: Path, config, cases, args, init_weights: Path | None = None, **train_changes) -> Path:
    from flare_seg.config import replace
    from flare_seg.training.loop import RunPaths, checkpoint_step, find_checkpoint, train

    cfg = replace(train_config(args), **train_changes)
    checkpoint = find_checkpoint(RunPaths(run))
    done = checkpoint_step(checkpoint) if checkpoint is not None else 0
    if done >= cfg.steps:
        log.info("%s: trained already (%d steps), reused", run, done)
        return run
    if done:
        log.info("%s: resuming at step %d of %d", run, done, cfg.steps)
    seconds = run / "train_seconds.txt"
    before = float(seconds.read_text()) if done and seconds.exists() else 0.0
    t0 = time.perf_counter()
    result = train(config, cfg, cases, run, resume=bool(done), progress=False,
                   init_weights=None if done else init_weights)
    if result.stopped:  # SIGTERM / Ctrl-C: its checkpoint is written; the same command resumes it
        raise SystemExit(f"{run}: stopped by {result.stopped} at step {result.step}; run the same command "
                         "again to resume")
    seconds.write_text(f"{before + time.perf_counter() - t0:.1f}\n")  # finished runs only: a killed one's time is lost
    return run


def segmenter_for(run: Path):
    from flare_seg.config import LocalizerConfig, SegmenterConfig
    from flare_seg.predict import Segmenter, default_model_dir, load_model

    return Segmenter(load_model(default_model_dir() / "loc", LocalizerConfig), load_model(run, SegmenterConfig))


def score(segmenter, image_hu, labels, geometry) -> dict:
    from flare_seg.evaluation.metrics import detection_scores, score_case

    pred = segmenter.segment(image_hu, geometry).labels
    scores = score_case(pred, labels, geometry.spacing_mm, "flare21")
    for organ, extra in detection_scores(pred, labels, geometry.spacing_mm).items():
        scores[organ].update(extra)
    return scores


def real_cases(shared: Path = SHARED) -> list[tuple[str, Path, Path]]:
    """The shared real CTs that exist under ``shared`` (missing ones are logged and left out)."""
    found = [("amos_0018", shared / "amos_0018" / "amos_0018_ct_windowed.nii.gz",
              shared / "amos_0018" / "amos_0018_labels_flare.nii.gz"),
             ("slab", shared / "upper_abdomen_slab" / "ct.nii.gz",
              shared / "upper_abdomen_slab" / "labels_flare_pseudo.nii.gz")]
    missing = [c[0] for c in found if not (c[1].exists() and c[2].exists())]
    if missing:
        log.warning("real CTs not found under %s, left out: %s", shared, ", ".join(missing))
    return [c for c in found if c[0] not in missing]


def evaluate_row(run: Path, held, segmenter=None, real: bool = True) -> dict:
    """A row's scores on the held-out phantoms and, with ``real``, on the shared real CTs; pass
    ``segmenter`` when the caller has the row's model loaded already."""
    from flare_seg import io
    from flare_seg.geometry import Geometry

    segmenter = segmenter or segmenter_for(run)
    result = {"phantoms": [score(segmenter, c.image_hu, c.labels, Geometry(c.image_hu.shape, c.spacing_mm))
                           for c in held]}
    for name, ct, gt in real_cases(SHARED_DATA[0]) if real else ():
        volume = io.read_ct(ct)
        labels, _, _ = io.read_image(gt)
        result[name] = [score(segmenter, volume.array, labels.astype(np.uint8), volume.geometry)]
    return result


def score_training(run: Path, parts, segmenter=None) -> dict:
    """The partial row's model on its own training phantoms, scored against their *full* labels,
    split into the organ each phantom labels and the organs it leaves unknown. A model that learned
    which organs each phantom labels (a shortcut the merged background allows at no cost) scores high
    on the first and near zero on the second; one that learned the organs scores alike on both."""
    from flare_seg.geometry import Geometry

    segmenter, labelled, unlabelled = segmenter or segmenter_for(run), [], []
    for case in parts:
        scores = score(segmenter, case.image_hu, case.labels, Geometry(case.image_hu.shape, case.spacing_mm))
        for index, organ in enumerate(ORGANS, start=1):
            (labelled if index in case.annotated else unlabelled).append(scores[organ]["dsc"])
    return {"labelled_dsc": float(np.mean(labelled)), "unlabelled_dsc": float(np.mean(unlabelled)),
            "cases": len(parts)}


def mean_over(cases: list[dict], organ: str, key: str) -> float:
    return float(np.mean([c[organ][key] for c in cases]))


ORGANS = ("liver", "kidney", "spleen", "pancreas")


def _methods_md(rows: dict, args) -> list[str]:
    lines = ["Paper-size networks (as deployed; forward pass at 160x128x160, one fresh process each):", "",
             "| method | params | GFLOP 160x128x160 | CPU forward s | peak RSS GB | trained here: params | train s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        f = row["forward"]
        lines.append(f"| {name} | {f['params']:,} | {row['gflop']:.1f} | {f['forward_s']:.2f} | "
                     f"{f['peak_rss_bytes'] / 1e9:.2f} | {row['trained_params']:,} | {row['train_seconds']:.0f} |")
    for part in [p for p in ("phantoms", "amos_0018", "slab") if p in next(iter(rows.values()))["scores"]]:
        n = len(next(iter(rows.values()))["scores"].get(part, []))
        lines += ["", f"**{part}** ({n} case{'s' if n != 1 else ''}): DSC / NSD (1 mm) / precision / recall per organ "
                  "(fractions, mean over cases), far false positives (ml more than 20 mm from the organ, summed)",
                  "", "| method | " + " | ".join(ORGANS) + " | far FP ml |", "|---|" + "---|" * (len(ORGANS) + 1)]
        for name, row in rows.items():
            cases = row["scores"][part]
            cells = [" / ".join(f"{mean_over(cases, o, k):.2f}" for k in ("dsc", "nsd", "precision", "recall"))
                     for o in ORGANS]
            far = sum(c[o]["far_fp_ml"] for c in cases for o in ORGANS)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {far:.1f} |")
    return lines


CPU_MARKS = "¹²³⁴⁵⁶⁷⁸⁹"


def cpu_marks(rows: dict, run_settings: dict) -> dict[str, str]:
    """A mark for each CPU other than the section's that some row was trained on (its floating-point
    order differs: the time, and the DSC by a few hundredths, with it)."""
    cpus = sorted({row["settings"].get("cpu") for row in rows.values() if row.get("settings")} -
                  {None, run_settings.get("cpu")})
    return dict(zip(cpus, CPU_MARKS, strict=False))


def _marked(name: str, row: dict, marks: dict) -> str:
    mark = marks.get((row.get("settings") or {}).get("cpu"))
    return f"{name} {mark}" if mark else name


def _partial_md(rows: dict, marks: dict | None = None) -> list[str]:
    marks = marks or {}
    lines = ["| training labels | loss | " + " | ".join(f"{o} DSC" for o in ORGANS) + " | mean |",
             "|---|---|" + "---:|" * (len(ORGANS) + 1)]
    for name, row in rows.items():
        values = [mean_over(row["scores"]["phantoms"], o, "dsc") for o in ORGANS]
        lines.append(f"| {_marked(name, row, marks)} | " + " | ".join(f"{v:.3f}" for v in values) +
                     f" | {np.mean(values):.3f} |")
    trained = {name: row for name, row in rows.items() if "train" in row}
    if trained:
        lines += ["", "The same models on their own training phantoms, scored against the phantoms' full labels "
                  "(`--score-train`): mean DSC of the organ each phantom labels, and of the three it leaves "
                  "unknown:", "", "| training labels | loss | labelled organ DSC | unlabelled organs DSC |",
                  "|---|---|---:|---:|"]
        lines += [f"| {_marked(name, row, marks)} | {row['train']['labelled_dsc']:.3f} | "
                  f"{row['train']['unlabelled_dsc']:.3f} |" for name, row in trained.items()]
    gaps = paired_gaps(rows)
    if gaps:
        lines += ["", "Each one-organ row against the fully labelled row of the same settings (steps, "
                  "phantoms, held-out phantoms, clipping, augmentation, CPU): the mean over held-out "
                  "phantoms of the per-phantom gap in mean DSC, with its paired standard error:", "",
                  "| training labels | loss | held out | fully labelled | this row | gap | paired SE |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {_marked(name, rows[name], marks)} | {g['phantoms']} | {g['full']:.3f} | {g['row']:.3f} | "
                  f"{g['gap']:.3f} | {g['se']:.3f} |" for name, g in gaps.items()]
    return lines


#: the settings a one-organ row shares with the fully labelled row it is compared with (not the
#: split: it does not touch a fully labelled run)
PAIRED_SETTINGS = ("steps", "train_phantoms", "heldout_phantoms", "clipnorm", "augment", "seed", "crop_zyx",
                   "lr", "cpu")


def paired_gaps(rows: dict) -> dict:
    """Each one-organ row's gap to the fully labelled row of the same :data:`PAIRED_SETTINGS` (rows
    without stored settings, those of one run, pair with each other): per held-out phantom, the
    fully labelled row's mean DSC over the organs minus this row's; their mean, and its standard
    error (ddof 1; 0 with one phantom). Rows without such a partner, or scored on other phantoms,
    are left out."""
    def key(row):
        settings = row.get("settings") or {}
        return tuple(json.dumps(settings.get(k)) for k in PAIRED_SETTINGS)

    def per_phantom(row):
        return np.array([np.mean([case[o]["dsc"] for o in ORGANS]) for case in row["scores"]["phantoms"]])

    full = {}
    for name, row in rows.items():
        if name.startswith(FULL_PREFIX):
            full.setdefault(key(row), row)
    out = {}
    for name, row in rows.items():
        partner = full.get(key(row))
        if name.startswith(FULL_PREFIX) or partner is None:
            continue
        a, b = per_phantom(partner), per_phantom(row)
        if len(a) != len(b):
            continue
        d = a - b
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        out[name] = {"phantoms": len(d), "full": float(a.mean()), "row": float(b.mean()),
                     "gap": float(d.mean()), "se": se}
    return out


#: how the one-organ sets are drawn (``--split``): ``balanced`` gives each organ to as many
#: parametric as AMOS-map phantoms (:func:`flare_seg.training.synthetic.synthetic_cases` alternates
#: the two kinds by index, even = parametric); ``by_index`` is the split of the runs stored before
#: stop 29 (case i labels organ i % 4 + 1), which gives the liver and spleen to parametric phantoms
#: only and the kidney and pancreas to AMOS-map phantoms only: a model that tells the two kinds
#: apart then learns which organs each kind labels
SPLITS = ("balanced", "by_index")


def split_organ(index: int, split: str = "balanced") -> int:
    """The organ label that training phantom ``index`` annotates under ``split`` (:data:`SPLITS`)."""
    if split == "by_index":
        return index % 4 + 1
    if split == "balanced":
        return (index // 2) % 4 + 1
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def partial_cases(cases, all_organs_box: bool = False, split: str = "balanced", organ_weights=None):
    """Four sets, each labelling one organ (:func:`split_organ`); the other organs unknown.

    ``all_organs_box``: each case's segmenter box is that of all its organs (from the phantom's full
    labels: a stand-in for the localizer's box, which is what the segmenter sees at inference),
    not that of its one labelled organ. ``organ_weights`` (liver, kidney, spleen, pancreas;
    ``--organ-weights``): each case's sampling weight is that of the organ its set labels, so a set
    is drawn in proportion to its weight (the sets are equal in size)."""
    import dataclasses

    from flare_seg.preprocess import bounding_box

    def boxed(c):  # only when asked: a case type without the field stays usable
        return {"roi": bounding_box(c.labels > 0)} if all_organs_box else {}

    def one_organ(i, c):
        organ = split_organ(i, split)
        weighted = {"weight": float(organ_weights[organ - 1])} if organ_weights else {}
        return dataclasses.replace(c, annotated=(organ,), **boxed(c), **weighted)

    return [one_organ(i, c) for i, c in enumerate(cases)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("compare_runs"))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--train", type=int, default=8, help="training phantoms")
    p.add_argument("--heldout", type=int, default=4, help="held-out phantoms")
    p.add_argument("--crop", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clipnorm", type=float,
                   help="clip each weight's gradient to this norm (default: no clipping); rows trained with it "
                        "say so in their names")
    p.add_argument("--spacing", type=float, default=4.0, help="segmenter grid spacing of the trained rows (mm)")
    p.add_argument("--local-levels", type=int, default=4)
    p.add_argument("--local-filters", type=int, default=16)
    p.add_argument("--spatial-filters", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true",
                   help="train with the default spatial and intensity augmentation (off by default: every row "
                        "then sees the same crops); the partial rows' names say so")
    p.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="checkpoint each row every N steps (default: at the end only), so a row cut short "
                        "resumes there when the same command runs again")
    p.add_argument("--pseudo-margin-mm", type=float, default=8.0,
                   help="self_box_confident: the unsure band on both sides of each predicted organ boundary (mm)")
    p.add_argument("--score-train", action="store_true",
                   help="also score each one-organ row on its own training phantoms against their full labels "
                        "(does it find the organs they leave unknown?); trained runs are reused")
    p.add_argument("--split", choices=SPLITS, default="balanced",
                   help="how the one-organ sets are drawn: balanced (each organ labelled in as many parametric "
                        "as AMOS-map phantoms) or by_index (the runs stored before stop 29: organ i %% 4 + 1, "
                        "kidney and pancreas in AMOS-map phantoms only)")
    p.add_argument("--organ-weights", type=float, nargs=4, metavar=("LIVER", "KIDNEY", "SPLEEN", "PANCREAS"),
                   help="partial rows: draw each one-organ set in proportion to its organ's weight (default: "
                        "all sets equally often); the fully labelled row is not touched")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", choices=("methods", "partial", "all", "forward"), default="all",
                   help="forward: only the paper-size forward passes (no training), for an idle machine")
    p.add_argument("--doc", type=Path, help="write the markdown tables here")
    p.add_argument("--forward", choices=tuple(ROWS), help=argparse.SUPPRESS)
    p.add_argument("--render", nargs="*", type=Path, metavar="DIR",
                   help="only write the tables from the rows finished so far in --out and these folders")
    p.add_argument("--shared-data", type=Path, default=SHARED, help="shared real data folder (default %(default)s)")
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), help="train only these rows (parallel processes)")
    p.add_argument("--full-run", type=Path, help="partial demo: the fully labelled SCN run to compare with")
    p.add_argument("--partial-rows", nargs="+", choices=tuple(PARTIAL_ROWS), default=list(PARTIAL_ROWS),
                   help="partial demo: the rows to train and score, in this order (default all of them)")
    p.add_argument("--forward-again", action="store_true",
                   help="with --render: measure every row's forward pass again now (on an idle machine) and "
                        "store it back in the folder the row came from")
    args = p.parse_args(argv)
    if args.organ_weights and (min(args.organ_weights) < 0 or sum(args.organ_weights) <= 0):
        p.error(f"--organ-weights {' '.join(f'{w:g}' for w in args.organ_weights)}: expected weights >= 0 "
                "with a positive sum")
    return args


def settings(args) -> dict:
    """What every row of one run shares, stored beside its rows so that ``--render`` can name it."""
    return {"steps": args.steps, "train_phantoms": args.train, "heldout_phantoms": args.heldout,
            "crop_zyx": list(args.crop), "lr": args.lr, "clipnorm": args.clipnorm, "seed": args.seed,
            "spacing_mm": args.spacing,
            "local": [args.local_levels, args.local_filters], "spatial_filters": args.spatial_filters,
            "augment": args.augment, "split": args.split, **forward_settings(args),
            **({"organ_weights": list(args.organ_weights)} if args.organ_weights else {})}


def forward_settings(args) -> dict:
    """The machine a forward pass was measured on (all a forward-only run has to name)."""
    return {"threads": args.threads, "cpu": cpu_description(), "machine": platform.machine()}


def paper_size_row(name: str, threads: int) -> dict:
    """A row's paper-size network: its forward pass (fresh process) and GFLOP at FORWARD_SIZE."""
    from flare_seg.flops import conv_flops
    from flare_seg.models import build_model

    return {"forward": measure_forward(name, threads),
            "gflop": conv_flops(build_model(seg_config(**ROWS[name])), FORWARD_SIZE) / 1e9}


def measure_forward(name: str, threads: int) -> dict:
    """One row's forward pass in a fresh process (its peak RSS is then that of the forward alone)."""
    proc = subprocess.run([sys.executable, __file__, "--forward", name, "--threads", str(threads)],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu"] = cpu_description()
    return result


def run_name(name: str) -> str:
    return name.replace(" + ", "_plus_").replace(" ", "_")


def run_methods(args, train, held) -> dict:
    from flare_seg.models import build_model, count_params

    rows = {}
    for name in args.rows or ROWS:
        config = trained_config(args, **ROWS[name])
        run = train_row(args.out / run_name(name), config, train, args)
        rows[name] = {**paper_size_row(name, args.threads),
                      "trained_params": count_params(build_model(config)),
                      "train_seconds": float((run / "train_seconds.txt").read_text()),
                      "scores": evaluate_row(run, held)}
        log.info("%s: %s", name, rows[name]["forward"])
        (args.out / "methods_so_far.json").write_text(json.dumps(rows, indent=1) + "\n")  # CPU is scarce
    return rows


#: what the fully labelled row's name says only in a section of the SCN row's own steps, not augmented
SCN_ROW = " (= the SCN row)"
PARTIAL_ROWS = {"full": f"all four organs labelled | standard loss{SCN_ROW}",
                "partial": "four sets, one organ each | partial-label loss",
                "naive": "four sets, one organ each | naive (unlabelled = background)",
                "hybrid": "four sets, one organ each | partial-label loss, seed 001's hybrid (batch Dice + focal)",
                "self": "four sets, one organ each | partial-label loss, background against its own belief (self)",
                "self_box": "four sets, one organ each, box of all organs | partial-label loss, background against "
                            "its own belief (self)",
                "hybrid_box": "four sets, one organ each, box of all organs | partial-label loss, seed 001's hybrid "
                              "(batch Dice + focal)",
                "self_box_pseudo": "four sets, one organ each, box of all organs | self for half the steps, then "
                                   "its own pseudo-labels for the unknown organs",
                "self_box_confident": "four sets, one organ each, box of all organs | self for half the steps, then "
                                      "self with its own confident pseudo-labels for the unknown organs"}
#: the run folder and the training-config changes of each row trained on the one-organ sets
PARTIAL_RUNS = {"partial": ("partial_loss", {}), "naive": ("partial_naive", {"partial_labels": False}),
                "hybrid": ("partial_hybrid", {"loss": "hybrid"}), "self": ("partial_self", {"partial_mode": "self"}),
                "self_box": ("partial_self_box", {"partial_mode": "self"}),
                "hybrid_box": ("partial_hybrid_box", {"loss": "hybrid"})}
#: rows whose one-organ cases train in the box of all organs (:func:`partial_cases`)
ALL_ORGANS_BOX = {"self_box", "hybrid_box", "self_box_pseudo", "self_box_confident"}


def partial_row_name(key: str, augment: bool, clipnorm: float | None = None) -> str:
    """A partial row's table name; an augmented or gradient-clipped run's rows say so (they sit beside
    the plain ones in ``--render``, and its fully labelled row is then not the methods table's SCN row)."""
    name = PARTIAL_ROWS[key]
    suffix = (", augmented" if augment else "") + (f", {_clipnorm_tag(clipnorm)}" if clipnorm is not None else "")
    return name.replace(SCN_ROW, "") + suffix if suffix else name


def organ_weights_tag(weights) -> str:
    """How a row trained with ``--organ-weights`` says so in its name."""
    return "sets drawn " + " / ".join(f"{w:g}" for w in weights)


def _clipnorm_tag(clipnorm: float) -> str:
    """How a clipped row's name says its ``--clipnorm`` (and how the settings line refers to it)."""
    return f"clipnorm {clipnorm:g}"


def pseudo_labelled(parts, segmenter) -> list:
    """Each one-organ case with its unknown organs filled in from ``segmenter``'s prediction, then
    taken as fully annotated: the annotated organ keeps its labels, and a label-0 voxel takes the
    predicted organ when that is one the case leaves unknown (so a predicted voxel of the annotated
    organ outside its labels stays background)."""
    import dataclasses

    from flare_seg.geometry import Geometry
    from flare_seg.training.partial import keep_annotated

    out = []
    for case in parts:
        predicted = segmenter.segment(case.image_hu, Geometry(case.image_hu.shape, case.spacing_mm)).labels
        known = keep_annotated(case.labels, case.annotated)
        fill = (known == 0) & (predicted > 0) & ~np.isin(predicted, case.annotated or ())
        out.append(dataclasses.replace(case, labels=np.where(fill, predicted, known).astype(np.uint8),
                                       annotated=None))
    return out


def pseudo_label_row(args, config, parts) -> tuple[Path, dict]:
    """The ``self_box_pseudo`` row (one round of self-training): ``self`` mode for half the steps
    (``round1/``), then that model's EMA weights pseudo-label the unknown organs of its own training
    phantoms (:func:`pseudo_labelled`) and the network, starting from those weights, trains the other
    half on them as fully labelled cases (``round2/``). Returns round 2's run and the pseudo-labels'
    quality (round 1's model on its training phantoms: its ``unlabelled_dsc`` is theirs)."""
    half = args.steps // 2
    folder = args.out / "partial_self_box_pseudo"
    first = train_row(folder / "round1", config, parts, args, steps=half, validate_every=half, partial_mode="self")
    segmenter = segmenter_for(first)
    quality = score_training(first, parts, segmenter)
    pseudo = pseudo_labelled(parts, segmenter)
    second = train_row(folder / "round2", config, pseudo, args, init_weights=first / "model.weights.h5",
                       steps=args.steps - half, validate_every=args.steps - half)
    return second, {"pseudo_labels": quality}


def confident_pseudo_labelled(parts, segmenter, margin_mm: float) -> tuple[list, dict]:
    """Each one-organ case with confident pseudo-labels of the organs it leaves unknown, as
    :attr:`flare_seg.training.data.TrainCase.pseudo`; its labels and ``annotated`` stay as they are.

    From ``segmenter``'s prediction: a voxel deeper than ``margin_mm`` inside a predicted unknown
    organ is that organ, one farther than ``margin_mm`` from every predicted unknown organ has none
    (the prediction says background or the annotated organ), and the band of ``margin_mm`` on both
    sides of each predicted boundary is unsure, as is a voxel where the prediction names the
    annotated organ off its labels. A case whose prediction misses an unknown organ entirely gets no
    "none" answers (only its confident organ cores), since the missing organ lies somewhere in it.

    Returns the cases and the pseudo-labels' quality against the phantoms' full labels, over the
    voxels off the annotated organ in all cases (the whole cached case, not only the box it trains
    in, so ``confident`` counts much air and body far from the organs): ``confident`` (share with
    an answer), ``organ_precision`` (answers naming an organ that are right), ``organ_recall``
    (unknown organs' voxels named so) and
    ``organ_called_none`` (unknown organs' voxels wrongly answered "none": what trains a miss)."""
    import dataclasses

    from scipy import ndimage

    from flare_seg.geometry import Geometry
    from flare_seg.training.partial import PSEUDO_UNSURE

    # voxels off the annotated organ, answered, named right, named, truly an unknown organ, that called none
    out, tally = [], np.zeros(6, np.int64)
    for case in parts:
        predicted = segmenter.segment(case.image_hu, Geometry(case.image_hu.shape, case.spacing_mm)).labels
        unknown = [o for o in range(1, len(ORGANS) + 1) if o not in (case.annotated or ())]
        pseudo = np.zeros(case.labels.shape, np.uint8)
        unsure = np.isin(predicted, case.annotated or ()) & ~np.isin(case.labels, case.annotated or ())
        cores, missing = [], False
        for organ in unknown:
            found = predicted == organ
            if not found.any():
                log.warning("%s: the round-1 model finds no %s; only organ cores are pseudo-labelled",
                            getattr(case, "case_id", "case"), ORGANS[organ - 1])
                missing = True
                continue
            inside = ndimage.distance_transform_edt(found, sampling=case.spacing_mm)
            outside = ndimage.distance_transform_edt(~found, sampling=case.spacing_mm)
            unsure |= (outside <= margin_mm) & (inside <= margin_mm)
            cores.append((organ, inside > margin_mm))
        pseudo[unsure] = PSEUDO_UNSURE
        if missing:
            pseudo[:] = PSEUDO_UNSURE
        for organ, core in cores:
            pseudo[core & ~unsure] = organ
        out.append(dataclasses.replace(case, pseudo=pseudo))
        known = np.isin(case.labels, case.annotated or ())
        free = ~known  # off the annotated organ (the truth may hold unknown organs there)
        answered = free & (pseudo != PSEUDO_UNSURE)
        named = answered & (pseudo > 0)
        truth = free & (case.labels > 0)
        tally += [free.sum(), answered.sum(), (named & (pseudo == case.labels)).sum(), named.sum(), truth.sum(),
                  (answered & (pseudo == 0) & truth).sum()]
    free, answered, right, named, truth, missed_wrongly = (int(v) for v in tally)
    return out, {"margin_mm": float(margin_mm), "confident": answered / max(free, 1),
                 "organ_precision": right / max(named, 1), "organ_recall": right / max(truth, 1),
                 "organ_called_none": missed_wrongly / max(truth, 1), "cases": len(parts)}


def confident_label_row(args, config, parts) -> tuple[Path, dict]:
    """The ``self_box_confident`` row: ``self`` mode for half the steps (``round1/``), then that
    model's EMA weights give its training phantoms confident pseudo-labels of their unknown organs
    (:func:`confident_pseudo_labelled`) and the network, starting from those weights, trains the
    other half in ``self`` mode with them (``round2_<band>mm/``, one per ``--pseudo-margin-mm``;
    round 1 is shared): the unknown organs' channels learn from the
    confident voxels, the unsure band around each predicted boundary stays unknown."""
    half = args.steps // 2
    folder = args.out / "partial_self_box_confident"
    first = train_row(folder / "round1", config, parts, args, steps=half, validate_every=half, partial_mode="self")
    cases, quality = confident_pseudo_labelled(parts, segmenter_for(first), args.pseudo_margin_mm)
    log.info("confident pseudo-labels (%g mm band): %.0f%% of the unlabelled voxels answered, organ precision "
             "%.3f, recall %.3f, unknown-organ voxels called none %.3f", args.pseudo_margin_mm,
             100 * quality["confident"], quality["organ_precision"], quality["organ_recall"],
             quality["organ_called_none"])
    second = train_row(folder / f"round2_{args.pseudo_margin_mm:g}mm", config, cases, args,
                       init_weights=first / "model.weights.h5", steps=args.steps - half,
                       validate_every=args.steps - half, partial_mode="self")
    return second, {"pseudo_labels": quality}


def run_partial(args, train, held, scn_full: Path) -> dict:
    """The partial-label rows, each trained and then scored before the next starts, and the rows so
    far stored after each (``partial_so_far.json``), so a run cut short keeps what it finished."""
    config = trained_config(args)
    path = args.out / "partial_so_far.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    for key in args.partial_rows:
        name = partial_row_name(key, args.augment, args.clipnorm)
        weights = None if key == "full" else args.organ_weights  # the fully labelled row is drawn as it is
        parts = partial_cases(train, all_organs_box=key in ALL_ORGANS_BOX, split=args.split, organ_weights=weights)
        extra = {}
        if key == "full":
            run = scn_full
        elif key == "self_box_pseudo":
            run, extra = pseudo_label_row(args, config, parts)
        elif key == "self_box_confident":
            run, extra = confident_label_row(args, config, parts)
        else:
            folder, changes = PARTIAL_RUNS[key]
            run = train_row(args.out / folder, config, parts, args, **changes)
        name = banded_name(name, extra)  # rows of two bands in one --out keep one entry each
        if weights:
            name += f", {organ_weights_tag(weights)}"
        segmenter = segmenter_for(run)  # loaded once for both scorings
        out[name] = {"scores": {"phantoms": evaluate_row(run, held, segmenter, real=False)["phantoms"]}, **extra}
        if args.score_train and key != "full":
            out[name]["train"] = score_training(run, parts, segmenter)
        path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.forward:
        print(json.dumps(forward(args.forward, args.threads)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    SHARED_DATA[0] = args.shared_data
    if args.render is not None:
        return render(args)
    from flare_seg.runtime import configure_training

    configure_training(threads=args.threads, deterministic=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "forward":
        rows = run_forward(args)
        return write_tables({"forward": rows, "settings": {"forward": forward_settings(args)}}, args)
    train, held = train_cases(args)
    results = settings(args)
    (args.out / "settings.json").write_text(json.dumps(results, indent=1) + "\n")
    if args.part in ("methods", "all"):
        results["methods"] = run_methods(args, train, held)
    if args.part in ("partial", "all"):
        full = args.full_run or (train_row(args.out / run_name("SCN"), trained_config(args), train, args)
                                 if "full" in args.partial_rows else None)
        results["partial"] = run_partial(args, train, held, full)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return write_tables(results, args)


def render(args) -> int:
    """Tables from the rows finished so far (``methods_so_far.json``, ``partial_so_far.json``,
    ``forward.json``) in ``--out`` and the ``--render`` folders. Each section is named with the settings
    of the first folder that holds it, so sections from runs of different lengths say so."""
    results: dict = {}
    for folder in [args.out, *args.render]:
        folder_settings = json.loads((folder / "settings.json").read_text()) \
            if (folder / "settings.json").exists() else {}
        for key in SECTIONS:
            path = folder / f"{key}_so_far.json" if key != "forward" else folder / "forward.json"
            if not path.exists():
                continue
            rows, section_settings = json.loads(path.read_text()), folder_settings
            if key == "forward":  # a forward-only run keeps its machine beside its rows
                section_settings, rows = rows["settings"], rows["rows"]
            if key == "methods" and args.forward_again:
                for name, row in rows.items():
                    row["forward"] = measure_forward(name, args.threads)
                    log.info("%s: forward again %s", name, row["forward"])
                path.write_text(json.dumps(rows, indent=1) + "\n")
            if key == "partial":  # each row keeps the settings it was trained with, and a name of its own
                reference = results.get("settings", {}).get(key, section_settings)
                named = {}
                for name, row in rows.items():
                    name = distinct_row_name(banded_name(name, row), section_settings, reference,
                                             [*results.get(key, {}), *named], folder.name)
                    named[name] = {**row, "settings": section_settings}
                rows = named
            results.setdefault(key, {}).update(rows)
            results.setdefault("settings", {}).setdefault(key, section_settings)
    for key in ("methods", "forward"):
        if key in results:
            results[key] = {name: results[key][name] for name in ROWS if name in results[key]}
    if "partial" in results:  # full, partial-label loss, naive; rows of other names after them
        clipnorms = sorted({row["settings"].get("clipnorm") for row in results["partial"].values()
                            if row.get("settings", {}).get("clipnorm") is not None})
        order = [partial_row_name(key, augment, clipnorm) for clipnorm in (None, *clipnorms)
                 for augment in (False, True) for key in PARTIAL_ROWS]
        results["partial"] = dict(sorted(results["partial"].items(), key=lambda row: _order_index(row[0], order)))
    return write_tables(results, args)


def _order_index(name: str, order: list[str]) -> int:
    """Where a partial row sits: at the row name it is, or else at the longest row name it extends (a
    row of another length or folder, ``"<name>, 6,000 steps"``, ``"<name> [folder]"``, sits with the
    rows of its own loss and settings); rows of names of neither kind last."""
    bases = [row.replace(SCN_ROW, "") for row in order]
    matches = [i for i, (row, base) in enumerate(zip(order, bases, strict=True))
               if name == row or name.startswith((f"{base},", f"{base} ["))]
    return max(matches, key=lambda i: len(bases[i])) if matches else len(order)


def banded_name(name: str, row: dict) -> str:
    """A ``self_box_confident`` row's name with its pseudo-labels' unsure band (``--pseudo-margin-mm``,
    stored with their quality), so rows of two bands stay apart."""
    margin = (row.get("pseudo_labels") or {}).get("margin_mm")
    return f"{name}, {margin:g} mm band" if margin is not None and not name.endswith(" mm band") else name


def distinct_row_name(name: str, row_settings: dict, reference: dict, taken, folder: str) -> str:
    """A partial row's name in a table rendered from several runs: a row trained for another number
    of steps than the section's own says how many, and a row whose name another run's row holds
    already (same labels, loss and steps, e.g. the same row trained again on another CPU) is marked
    with its folder, so that no row overwrites another."""
    steps, phantoms = row_settings.get("steps"), row_settings.get("train_phantoms")
    heldout, split = row_settings.get("heldout_phantoms"), split_of(row_settings)
    suffixes = [f"{steps:,} steps" if steps not in (None, reference.get("steps")) else "",
                f"{phantoms} phantoms" if phantoms not in (None, reference.get("train_phantoms")) else "",
                f"{heldout} held out" if heldout not in (None, reference.get("heldout_phantoms")) else "",
                SPLIT_TAGS[split] if not name.startswith(FULL_PREFIX) and split != split_of(reference) else ""]
    if any(suffixes):
        name = name.replace(SCN_ROW, "") + "".join(f", {s}" for s in suffixes if s)
    return f"{name} [{folder}]" if name in taken else name


#: the fully labelled rows' names begin so (the split does not touch them)
FULL_PREFIX = PARTIAL_ROWS["full"].split(" | ")[0]
#: what a one-organ row's name says of its split when it is rendered beside rows of the other one
SPLIT_TAGS = {"balanced": "balanced sets", "by_index": "sets by index"}
SPLIT_TEXT = {"balanced": "one-organ sets balanced over the phantom kinds (each organ labelled in as many "
                          "parametric as AMOS-map phantoms)",
              "by_index": "one-organ sets by phantom index (phantom i labels organ i % 4 + 1: the liver and "
                          "spleen in parametric phantoms only, the kidney and pancreas in AMOS-map phantoms only)"}


def split_of(run_settings: dict) -> str:
    """A run's ``--split``; runs stored before the flag drew their sets by index."""
    return run_settings.get("split", "by_index")


def run_forward(args) -> dict:
    """Every row's paper-size forward pass, each in a fresh process; no training (weights do not
    change the time). Meant for an idle machine: the methods rows' own forward columns are measured
    between trainings."""
    rows = {}
    for name in args.rows or ROWS:
        rows[name] = paper_size_row(name, args.threads)
        log.info("%s: %s", name, rows[name]["forward"])
    (args.out / "forward.json").write_text(json.dumps({"settings": forward_settings(args), "rows": rows},
                                                      indent=1) + "\n")
    return rows


SECTIONS = ("methods", "forward", "partial")


def marks(section: str) -> tuple[str, str]:
    return f"<!-- compare_methods.py {section}: begin -->", f"<!-- compare_methods.py {section}: end -->"


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def settings_md(results: dict, extra: str = "") -> list[str]:
    """The line naming a run's settings; ``extra`` is one more clause at its end (a trained run's)."""
    if "steps" not in results:  # a forward-only run names its machine only
        return [f"Measured by `benchmarks/compare_methods.py` on {results['cpu']} ({_threads(results['threads'])}).",
                ""] if "cpu" in results else []
    local = results["local"]
    return [f"Measured by `benchmarks/compare_methods.py` on {results['cpu']} ({_threads(results['threads'])}): "
            f"{results['steps']} steps, {results['train_phantoms']} training phantoms, "
            f"{results['heldout_phantoms']} held-out, crop {' x '.join(map(str, results['crop_zyx']))}, "
            f"lr {results['lr']}, seed {results['seed']}; trained rows at a {results['spacing_mm']} mm grid, "
            f"local net {local[0]} levels x {local[1]} filters, spatial nets {results['spatial_filters']} "
            f"filters; augmentation {'on' if results.get('augment') else 'off'}; "
            f"{_clipping(results.get('clipnorm'))}{f'; {extra}' if extra else ''}.", ""]


def _clipping(clipnorm: float | None) -> str:
    """What a run's ``--clipnorm`` was (runs stored before the flag existed did not clip)."""
    return "no gradient clipping" if clipnorm is None else f"each weight's gradient clipped to norm {clipnorm:g}"


def _forward_md(rows: dict) -> list[str]:
    lines = ["Paper-size networks at 160x128x160 (random weights: the time does not depend on them), "
             "one fresh process each, nothing else running; median of 2 timed passes after one warm-up:", "",
             "| method | params | GFLOP 160x128x160 | CPU forward s | peak RSS GB |", "|---|---:|---:|---:|---:|"]
    for name, row in rows.items():
        f = row["forward"]
        lines.append(f"| {name} | {f['params']:,} | {row['gflop']:.1f} | {f['forward_s']:.2f} | "
                     f"{f['peak_rss_bytes'] / 1e9:.2f} |")
    return lines


def _other_settings_md(rows: dict, run_settings: dict, marks: dict) -> list[str]:
    """A line for the partial rows rendered from a run other than the one that names the section:
    augmented rows, clipped rows, rows of another length or number of training or held-out phantoms,
    one-organ rows of the other split (:func:`split_of`), and what each row's CPU mark
    (:func:`cpu_marks`) means."""
    others = {name: row["settings"] for name, row in rows.items() if row.get("settings")
              and (any(row["settings"].get(k) != run_settings.get(k)
                       for k in ("augment", "steps", "cpu", "clipnorm", "train_phantoms", "heldout_phantoms"))
                   or split_of(row["settings"]) != split_of(run_settings))}
    if not others:
        return []
    parts = []
    if any(s.get("augment") for s in others.values()) and not run_settings.get("augment"):
        parts.append("rows named *augmented* trained with the default spatial and intensity augmentation "
                     "(`--augment`)")
    clipnorms = sorted({s["clipnorm"] for s in others.values() if s.get("clipnorm") is not None
                        and s["clipnorm"] != run_settings.get("clipnorm")})
    parts += [f"rows named *{_clipnorm_tag(c)}* trained with {_clipping(c)} (`--clipnorm`)" for c in clipnorms]
    def other_values(key: str) -> list:  # the values of ``key`` the other rows have and the section has not
        return sorted({s[key] for s in others.values() if s.get(key) not in (None, run_settings.get(key))})

    parts += [f"rows named *{n:,} steps* trained for {n:,} steps" for n in other_values("steps")]
    parts += [f"rows named *{n} phantoms* trained on {n} phantoms" for n in other_values("train_phantoms")]
    ref = run_settings.get("heldout_phantoms")
    parts += [f"rows named *{n} held out* scored on {n} held-out phantoms"
              + (f" (the {ref} above and {n - ref} more)" if ref and n > ref else "")
              for n in other_values("heldout_phantoms")]
    splits = sorted({split_of(s) for s in others.values()} - {split_of(run_settings)})
    parts += [f"rows named *{SPLIT_TAGS[sp]}* trained on {SPLIT_TEXT[sp]} (`--split {sp}`)" for sp in splits]
    if any(name.endswith("]") for name in others):
        parts.append("a row marked *[folder]* is the row of that name trained again, stored in that folder")
    parts += [f"rows marked {mark} trained on {cpu}" for cpu, mark in marks.items()]
    text = "; ".join(parts)
    return [f"{text[0].upper()}{text[1:]}; every other setting as above.", ""]


def section_md(key: str, rows: dict, run_settings: dict, args) -> str:
    title = {"methods": "## Methods", "forward": "## Forward pass on an idle machine",
             "partial": "## Partial labels"}[key]
    marks = cpu_marks(rows, run_settings) if key == "partial" else {}
    body = {"methods": lambda: _methods_md(rows, args), "forward": lambda: _forward_md(rows),
            "partial": lambda: _partial_md(rows, marks)}[key]()
    lines = settings_md(run_settings, SPLIT_TEXT[split_of(run_settings)] if key == "partial" else "")
    if key == "partial":
        lines += _other_settings_md(rows, run_settings, marks)
    return "\n".join([title, "", *lines, *body, ""])


def write_tables(results: dict, args) -> int:
    sections = {key: section_md(key, results[key], results.get("settings", {}).get(key, results), args)
                for key in SECTIONS if key in results}
    print("\n".join(sections.values()))
    if args.doc:
        from flare_seg.atomic import write_text

        text = args.doc.read_text() if args.doc.exists() else ""
        for key, section in sections.items():
            text = into_doc(text, section, *marks(key))
        write_text(args.doc, text)
    return 0


def into_doc(old: str, section: str, begin: str, end: str) -> str:
    """``old`` with one generated section replaced: what lies between its ``begin`` and ``end``
    markers, so the prose and the other sections survive a rerun; a section without markers yet is
    appended at the end."""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        return f"{head}{begin}\n{section}\n{end}{rest.split(end, 1)[1]}"
    return f"{old.rstrip()}\n\n{begin}\n{section}\n{end}\n".lstrip()


if __name__ == "__main__":
    sys.exit(main())
