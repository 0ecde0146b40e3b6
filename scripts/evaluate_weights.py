#!/usr/bin/env python3
"""Measure a model folder (``loc/`` + ``seg/``; default: the bundled weights) for ``weights/MODEL_CARD.md``.

1. **Held-out phantoms**: ``--phantoms N`` parametric phantoms from seed stream
   ``default_rng([2024, 7, i])`` (training draws ``[11 or 12, 1 or 2, i]``), on clinical grids unlike
   the training grids (512 x 512 in-plane at 0.7-0.9 mm, 100-160 slices at 2-3 mm, varied per case),
   written as ``OUT/phantoms/{imagesTr,labelsTr}``, predicted into ``OUT/phantoms/predictions`` and
   scored with :func:`flare_seg.evaluation.evaluate.evaluate_folder` under the FLARE21 and FLARE22 protocols.
2. **Real slab** (``SHARED/upper_abdomen_slab``): DSC/NSD against its TotalSegmentator pseudo labels
   (liver, spleen, pancreas; the slab has no kidney: a predicted kidney is reported in ml).
3. **Other real CTs**: ``SHARED/amos_0018`` (manual labels of all four organs; distributed windowed
   to [-160, 240] HU), ``SHARED/liver_dome_3slice`` (liver) and ``SHARED/head_neck_negative`` (no
   abdominal organ: organ ml found), the same cases and files as ``training/configs/real_val.json``.
4. **Out of domain** (``SHARED/chest_out_of_domain``): organ voxels and ml found in the chest CT cut
   above the diaphragm (should be none) and in the two chest CTs reaching below it (informative).
5. QC PNGs in ``OUT/qc`` (copied to ``--docs DIR`` when given).

Outputs: ``OUT/results.json`` (everything, with provenance) and ``OUT/results.md`` (tables for the
model card, also printed). Summaries are in percent (mean ± population std over cases, as
``flare-seg evaluate``); per-case scores are fractions in [0, 1].

    python scripts/evaluate_weights.py --out eval_weights/                 # bundled weights, 20 phantoms
    python scripts/evaluate_weights.py --model-dir runs/pair --out e/ --fast --phantoms 2   # quick check
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from flare_seg import atomic
from flare_seg.cli.args import int_triple, triple
from flare_seg.engines import ENGINES, PRECISION_CHOICES
from flare_seg.instrument import cpu_description

log = logging.getLogger("evaluate_weights")

HELD_OUT_SEED, HELD_OUT_STREAM = 2024, 7
PROTOCOLS = ("flare21", "flare22")
FAST_SHAPE, FAST_SPACING = (40, 96, 96), (6.0, 3.6, 3.6)
SLAB_DIR, CHEST_DIR = "upper_abdomen_slab", "chest_out_of_domain"
CHEST_EMPTY = "chest_above_diaphragm.nii.gz"
CHEST_LOWER = ("aorta_report_ct_cropped.nii.gz", "pulmonary_report_ct_cropped.nii.gz")
DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# ----------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help="folder with loc/ and seg/ (default: bundled weights)")
    p.add_argument("--out", "-o", type=Path, default=Path("eval_weights"), help="output folder (default eval_weights)")
    p.add_argument("--phantoms", type=int, default=20, metavar="N", help="held-out phantoms (default 20)")
    p.add_argument("--phantom-shape", type=int_triple, metavar="Z,Y,X",
                   help="fixed phantom array size (default: 100-160 x 512 x 512, varied per case)")
    p.add_argument("--phantom-spacing", type=triple, metavar="Z,Y,X",
                   help="fixed phantom spacing in mm (default: 2-3 mm slices, 0.7-0.9 mm in-plane, varied)")
    p.add_argument("--fast", action="store_true",
                   help=f"small phantoms for tests ({'x'.join(map(str, FAST_SHAPE))} voxels at "
                        f"{'x'.join(map(str, FAST_SPACING))} mm)")
    p.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED,
                   help="the shared real data folder (default: %(default)s); parts whose files are absent are skipped")
    p.add_argument("--docs", type=Path, default=None, help="also copy the QC PNGs into this folder (e.g. docs/)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="default auto (GPU if present)")
    p.add_argument("--threads", type=int, default=None, help="compute threads of the backend")
    p.add_argument("--engine", choices=ENGINES, default=None,
                   help="inference engine (default: as flare-seg predict chooses, OpenVINO on a CPU host)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="inference precision (default fp32; auto: bf16 on OpenVINO where the CPU has it natively)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.phantoms < 0:
        p.error("--phantoms must be >= 0")
    return args


# ----------------------------------------------------------------------------- held-out phantoms
def phantom_view(rng: np.random.Generator, args) -> tuple[tuple, tuple, tuple]:
    """Shape, spacing (z, y, x) and field-of-view shift (mm) of one held-out phantom."""
    spacing = np.array([rng.uniform(2.0, 3.0)] + [rng.uniform(0.7, 0.9)] * 2)
    shape = np.array([np.clip(round(rng.uniform(300.0, 400.0) / spacing[0]), 100, 160), 512, 512])
    shift = (rng.uniform(-30, 30), rng.uniform(-10, 10), rng.uniform(-10, 10))
    if args.fast:
        shape, spacing = np.array(FAST_SHAPE), np.array(FAST_SPACING)
    if args.phantom_shape:
        shape = np.array(args.phantom_shape)
    if args.phantom_spacing:
        spacing = np.array(args.phantom_spacing)
    return (tuple(int(n) for n in shape), tuple(round(float(s), 4) for s in spacing),
            tuple(round(float(v), 2) for v in shift))


def _clear_stale(folders: list[Path]) -> None:
    """Remove earlier held-out files, so the folder evaluation sees this run's cases only."""
    for folder in folders:
        for path in folder.glob("heldout_*"):
            path.unlink()


def write_held_out_phantoms(folder: Path, args) -> list[dict]:
    """Draw and write the held-out phantoms (FLARE layout); returns one record per case."""
    from tqdm import tqdm

    from flare_seg.cli.phantom import DIRECTIONS, write_phantom
    from flare_seg.labels import NAMES, ORGANS
    from flare_seg.synth import phantom

    _clear_stale([folder / "imagesTr", folder / "labelsTr", folder / "predictions"])
    cases = []
    for i in tqdm(range(args.phantoms), desc="phantoms", unit="case", disable=args.no_progress):
        rng = np.random.default_rng([HELD_OUT_SEED, HELD_OUT_STREAM, i])
        shape, spacing, shift = phantom_view(rng, args)
        ct, labels = phantom.make_phantom(rng, shape_zyx=shape, spacing_mm=spacing, field_of_view_shift_mm=shift)
        case = f"heldout_{i:03d}"
        write_phantom(folder, case, ct, labels, spacing, DIRECTIONS["identity"], "flare", qc=False)
        counts = np.bincount(labels.ravel(), minlength=len(NAMES))
        voxel_ml = float(np.prod(spacing)) / 1000.0
        cases.append({"case": case, "seed": [HELD_OUT_SEED, HELD_OUT_STREAM, i], "shape_zyx": list(shape),
                      "spacing_mm_zyx": list(spacing), "fov_shift_mm_zyx": list(shift),
                      "gt_volume_ml": {NAMES[o]: round(float(counts[o]) * voxel_ml, 2) for o in ORGANS}})
        log.info("%s: %s at %s mm, shift %s mm", case, shape, spacing, shift)
    return cases


def predict_phantoms(segmenter, folder: Path, progress: bool) -> list[dict]:
    """Predict ``folder/imagesTr`` into ``folder/predictions``; per-case records of ``run_jobs``."""
    from flare_seg.predict import plan_jobs, run_jobs

    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    records = run_jobs(segmenter, plan_jobs(folder / "imagesTr", folder / "predictions"), progress=progress)
    failed = [r for r in records if r.get("status") != "ok"]
    if failed:
        raise RuntimeError(f"prediction failed for {len(failed)} phantom(s): {failed[0].get('error')}")
    return records


def score_phantoms(folder: Path) -> dict:
    """Both protocols: the harness's summary document (percent) plus the per-case rows (fractions)."""
    from flare_seg.evaluation.evaluate import evaluate_folder, plot_boxplots, summary_document, write_csv

    scores = {}
    for protocol in PROTOCOLS:
        rows = evaluate_folder(folder / "predictions", folder / "labelsTr", protocol=protocol)
        write_csv(rows, folder / f"scores_{protocol}.csv")
        plot_boxplots(rows, folder / f"boxplot_{protocol}.png")
        scores[protocol] = {**summary_document(rows, protocol), "per_case": rows}
    return scores


def held_out_section(segmenter, out: Path, args) -> dict:
    folder = out / "phantoms"
    if args.phantoms == 0:
        log.info("held-out phantoms: skipped (--phantoms 0)")
        return {"skipped": "--phantoms 0"}
    cases = write_held_out_phantoms(folder, args)
    records = predict_phantoms(segmenter, folder, not args.no_progress)
    for case, record in zip(cases, records, strict=True):
        case["pred_volume_ml"] = record.get("organ_volumes_ml")
        case["seconds_total"] = record.get("seconds_total")
    section = {"seed_stream": [HELD_OUT_SEED, HELD_OUT_STREAM], "cases": cases, **score_phantoms(folder)}
    section["qc_png"] = str(_phantom_qc(folder, cases[0]["case"], out / "qc", section))
    return section


def _phantom_qc(folder: Path, case: str, qc_dir: Path, section: dict) -> Path:
    from flare_seg import io
    from flare_seg.evaluation.qc import overlay_png

    ct, geometry, _ = io.read_image(folder / "imagesTr" / f"{case}_0000.nii.gz")
    pred, _, _ = io.read_image(folder / "predictions" / f"{case}.nii.gz")
    dsc = {r["organ"]: r["dsc"] for r in section["flare21"]["per_case"] if r["case"] == case}
    title = f"held-out phantom {case} (prediction): DSC " + ", ".join(f"{o} {v:.2f}" for o, v in dsc.items())
    return overlay_png(ct, pred, geometry, qc_dir / "qc_heldout_phantom.png", title=title)


# ----------------------------------------------------------------------------- real data
def _segment_file(segmenter, path: Path, pred_path: Path, qc_path: Path | None = None, title: str = "") -> dict:
    """Segment one CT file, write its labels (and a QC PNG); returns volumes, voxel counts and notes."""
    from flare_seg import io
    from flare_seg.evaluation.qc import overlay_png
    from flare_seg.labels import NAMES, ORGANS

    volume = io.read_ct(path)
    t0 = time.perf_counter()
    result = segmenter.segment(volume.array, volume.geometry)
    seconds = time.perf_counter() - t0
    io.write_labels(result.labels, volume.geometry, pred_path)
    if qc_path is not None:
        overlay_png(volume.array, result.labels, volume.geometry, qc_path, title=title)
    counts = np.bincount(result.labels.ravel(), minlength=len(NAMES))
    return {"input": str(path), "prediction": str(pred_path), "seconds": round(seconds, 2),
            "shape_zyx": list(volume.geometry.shape),
            "spacing_mm_zyx": [round(s, 4) for s in volume.geometry.spacing_mm],
            "organ_voxels": {NAMES[o]: int(counts[o]) for o in ORGANS},
            "organ_volumes_ml": result.report.organ_volumes_ml,
            "warnings": volume.warnings + result.report.warnings, "notes": result.report.notes,
            "qc_png": None if qc_path is None else str(qc_path)}


def _gt_volumes_ml(gt_path: Path) -> dict:
    from flare_seg import io
    from flare_seg.labels import NAMES, ORGANS

    gt, geometry, _ = io.read_image(gt_path)
    counts = np.bincount(np.asarray(gt, dtype=np.int64).ravel(), minlength=len(NAMES))
    return {NAMES[o]: round(float(counts[o]) * geometry.voxel_volume_ml, 2) for o in ORGANS}


def slab_section(segmenter, shared: Path, out: Path) -> dict:
    """Real slab vs its pseudo labels: DSC/NSD per organ present; kidney (absent in GT) in ml."""
    from flare_seg.evaluation.evaluate import evaluate_case

    ct, gt = shared / SLAB_DIR / "ct.nii.gz", shared / SLAB_DIR / "labels_flare_pseudo.nii.gz"
    if not (ct.is_file() and gt.is_file()):
        log.warning("real slab: skipped, %s or %s not found", ct, gt)
        return {"skipped": f"not found: {ct} / {gt}"}
    (out / "real").mkdir(parents=True, exist_ok=True)
    result = _segment_file(segmenter, ct, out / "real" / "upper_abdomen_slab.nii.gz",
                           out / "qc" / "qc_upper_abdomen_slab.png", "upper abdomen slab (prediction)")
    gt_ml = _gt_volumes_ml(gt)
    organs = {}
    for protocol in PROTOCOLS:
        for row in evaluate_case("upper_abdomen_slab", Path(result["prediction"]), gt, protocol):
            if row["status"] != "ok":
                raise RuntimeError(f"slab scoring failed: {row['message']}")
            entry = organs.setdefault(row["organ"], {"gt_ml": gt_ml[row["organ"]],
                                                     "pred_ml": result["organ_volumes_ml"][row["organ"]]})
            if gt_ml[row["organ"]] > 0:
                entry.update({"dsc": row["dsc"], f"nsd_{protocol}": row["nsd"],
                              f"tolerance_mm_{protocol}": row["tolerance_mm"]})
            else:
                entry.update(status="absent in GT", flare_rule_score=row["dsc"])
    return {**result, "ground_truth": str(gt), "ground_truth_kind": "TotalSegmentator pseudo labels (not manual)",
            "organs": organs}


def chest_section(segmenter, shared: Path, out: Path) -> dict:
    """Organ volumes found in the chest CTs (the one cut above the diaphragm should have none)."""
    folder = shared / CHEST_DIR
    if not (folder / CHEST_EMPTY).is_file():
        log.warning("out-of-domain chest: skipped, %s not found", folder / CHEST_EMPTY)
        return {"skipped": f"not found: {folder / CHEST_EMPTY}"}
    (out / "real").mkdir(parents=True, exist_ok=True)
    section = {}
    for name in (CHEST_EMPTY, *CHEST_LOWER):
        path = folder / name
        if not path.is_file():
            log.warning("out-of-domain chest: %s not found, skipped", path)
            continue
        case = name.removesuffix(".nii.gz")
        qc = out / "qc" / "qc_chest_above_diaphragm.png" if name == CHEST_EMPTY else None
        result = _segment_file(segmenter, path, out / "real" / name, qc, f"{case} (prediction)")
        result["expected"] = ("no abdominal organ (wrongly found voxels)" if name == CHEST_EMPTY
                              else "lowest 50-70 mm below the diaphragm: some liver/spleen plausible (no GT)")
        section[case] = result
        log.info("%s: %s", case, result["organ_volumes_ml"])
    return section


#: (case, CT, labels or None, organs scored): the real CTs beyond the slab, as in training/configs/real_val.json
REAL_CASES = (
    ("amos_0018", "amos_0018/amos_0018_ct_windowed.nii.gz", "amos_0018/amos_0018_labels_flare.nii.gz",
     ("liver", "kidney", "spleen", "pancreas")),
    ("liver_dome", "liver_dome_3slice/ct.nii.gz", "liver_dome_3slice/labels_flare_liver_only.nii.gz", ("liver",)),
    ("head_neck", "head_neck_negative/totalseg_s0003_ct.nii.gz", None, ()),
)


def real_cases_section(segmenter, shared: Path, out: Path) -> dict:
    """amos_0018 and the liver dome: DSC/NSD of the organs their labels hold; head/neck: organ ml found."""
    from flare_seg.evaluation.evaluate import evaluate_case

    section = {}
    for case, ct_rel, gt_rel, organs in REAL_CASES:
        ct, gt = shared / ct_rel, (shared / gt_rel if gt_rel else None)
        if not ct.is_file() or (gt is not None and not gt.is_file()):
            log.warning("real CT %s: skipped, %s not found", case, ct if not ct.is_file() else gt)
            section[case] = {"skipped": f"not found: {ct_rel}" + (f" / {gt_rel}" if gt_rel else "")}
            continue
        (out / "real").mkdir(parents=True, exist_ok=True)
        result = _segment_file(segmenter, ct, out / "real" / f"{case}.nii.gz", out / "qc" / f"qc_{case}.png",
                               f"{case} (prediction)")
        result["organs"] = {}
        if gt is None:
            result["expected"] = "no abdominal organ (wrongly found volume)"
        else:
            gt_ml = _gt_volumes_ml(gt)
            for row in evaluate_case(case, Path(result["prediction"]), gt, "flare21"):
                if row["status"] != "ok":
                    raise RuntimeError(f"{case} scoring failed: {row['message']}")
                if row["organ"] in organs:
                    result["organs"][row["organ"]] = {"gt_ml": gt_ml[row["organ"]], "dsc": row["dsc"],
                                                      "nsd_flare21": row["nsd"],
                                                      "pred_ml": result["organ_volumes_ml"][row["organ"]]}
        section[case] = result
        log.info("%s: %s", case, {o: round(e["dsc"], 3) for o, e in result["organs"].items()}
                 or result["organ_volumes_ml"])
    return section


# ----------------------------------------------------------------------------- provenance
def machine_info() -> dict:
    try:
        ram_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram_gb = None
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": cpu_description(), "cpu_count": os.cpu_count(), "ram_gb": ram_gb,
            "python": platform.python_version(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def qc_pngs(results: dict) -> list[str]:
    """The QC PNGs this run wrote (held-out phantom, slab, other real CTs, chest above the diaphragm)."""
    chest = results["out_of_domain_chest"].get(CHEST_EMPTY.removesuffix(".nii.gz"), {})
    entries = (results["held_out_phantoms"], results["real_slab"], *results.get("real_cases", {}).values(), chest)
    return [entry["qc_png"] for entry in entries if entry.get("qc_png")]


def copy_qc(paths: list[str], docs: Path | None) -> list[str]:
    if docs is None:
        return []
    docs.mkdir(parents=True, exist_ok=True)
    return [str(shutil.copy2(p, docs / Path(p).name)) for p in paths]


# ----------------------------------------------------------------------------- markdown
def _pct(mean, std) -> str:
    return "-" if mean is None else f"{mean:.1f} ± {std:.1f}"


def _span(values, fmt=".2f") -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def _held_out_md(section: dict) -> list[str]:
    if "skipped" in section:
        return [f"Held-out phantoms: skipped ({section['skipped']}).", ""]
    s21, s22 = section["flare21"]["summary"], section["flare22"]["summary"]
    tol = section["flare22"]["tolerances_mm"]
    cases = section["cases"]
    shape = np.array([c["shape_zyx"] for c in cases])
    spacing = np.array([c["spacing_mm_zyx"] for c in cases])
    plural = "" if len(cases) == 1 else "s"
    lines = [f"Held-out parametric phantoms: {len(cases)} case{plural}, seeds "
             f"`default_rng([{HELD_OUT_SEED}, {HELD_OUT_STREAM}, i])` (never used in training), "
             f"{_span(shape[:, 0], 'd')} x {_span(shape[:, 1], 'd')} x {_span(shape[:, 2], 'd')} voxels, "
             f"slices {_span(spacing[:, 0])} mm, in-plane {_span(spacing[:, 1])} mm. "
             "Mean ± std over cases, percent.", "",
             "| Organ | DSC | NSD FLARE21 (1 mm) | NSD FLARE22 (tolerance) |", "|---|---|---|---|"]
    for organ in (*tol, "mean_of_organs"):
        a, b = s21[organ], s22[organ]
        label = "Mean of organs" if organ == "mean_of_organs" else f"{organ.capitalize()}"
        tol_text = "" if organ == "mean_of_organs" else f" ({tol[organ]:g} mm)"
        lines.append(f"| {label} | {_pct(a['dsc_mean_pct'], a['dsc_std_pct'])} | "
                     f"{_pct(a['nsd_mean_pct'], a['nsd_std_pct'])} | "
                     f"{_pct(b['nsd_mean_pct'], b['nsd_std_pct'])}{tol_text} |")
    return lines + [""]


def _slab_md(section: dict) -> list[str]:
    if "skipped" in section:
        return [f"Real slab: skipped ({section['skipped']}).", ""]
    lines = [f"Real upper-abdomen slab ({' x '.join(map(str, section['shape_zyx']))} voxels, "
             f"{section['spacing_mm_zyx']} mm) against TotalSegmentator pseudo labels (not manual), percent:", "",
             "| Organ | GT ml | predicted ml | DSC | NSD FLARE21 (1 mm) | NSD FLARE22 |", "|---|---|---|---|---|---|"]
    for organ, e in section["organs"].items():
        if e.get("status") == "absent in GT":
            lines.append(f"| {organ.capitalize()} | absent in GT | {e['pred_ml']:.1f} | FLARE rule: "
                         f"{100 * e['flare_rule_score']:.0f} (0 if any predicted) | | |")
        else:
            lines.append(f"| {organ.capitalize()} | {e['gt_ml']:.1f} | {e['pred_ml']:.1f} | {100 * e['dsc']:.1f} | "
                         f"{100 * e['nsd_flare21']:.1f} | "
                         f"{100 * e['nsd_flare22']:.1f} ({e['tolerance_mm_flare22']:g} mm) |")
    return lines + [""]


def _chest_md(section: dict) -> list[str]:
    if "skipped" in section:
        return [f"Out-of-domain chest CTs: skipped ({section['skipped']}).", ""]
    organs = list(next(iter(section.values()))["organ_voxels"]) if section else []
    lines = ["Out-of-domain chest CTs: organ voxels found (ml).", "",
             "| Case | expected | " + " | ".join(o.capitalize() for o in organs) + " |",
             "|---|---|" + "---|" * len(organs)]
    for case, r in section.items():
        expected = "none" if case == CHEST_EMPTY.removesuffix(".nii.gz") else "some liver/spleen plausible"
        cells = " | ".join(f"{r['organ_voxels'][o]} ({r['organ_volumes_ml'][o]:.1f})" for o in organs)
        lines.append(f"| {case} | {expected} | {cells} |")
    return lines + [""]


def _real_md(section: dict) -> list[str]:
    lines = ["Other real CTs (flare21 protocol; DSC and NSD in percent, volumes in ml):", "",
             "| Case | Organ | GT ml | predicted ml | DSC | NSD (1 mm) |", "|---|---|---|---|---|---|"]
    for case, r in section.items():
        if "skipped" in r:
            lines.append(f"| {case} | skipped ({r['skipped']}) | | | | |")
        elif not r["organs"]:
            found = sum(r["organ_volumes_ml"].values())
            lines.append(f"| {case} | any organ (none expected) | 0 | {found:.1f} | | |")
        for organ, e in r.get("organs", {}).items():
            lines.append(f"| {case} | {organ} | {e['gt_ml']:.1f} | {e['pred_ml']:.1f} | {100 * e['dsc']:.1f} | "
                         f"{100 * e['nsd_flare21']:.1f} |")
    return lines + [""]


def results_markdown(results: dict) -> str:
    prov = results["provenance"]
    sha = ", ".join(f"{k} `{v[:16]}`" for k, v in prov["weights_sha256"].items())
    machine = results["machine"]
    head = [f"Measured {results['date']} with flare-seg {results['flare_seg_version']} "
            f"(`scripts/evaluate_weights.py`), weights sha256 {sha}; {prov.get('device', '?')} "
            f"({prov.get('device_name', '')}), {machine['cpu_count']} CPU cores ({machine['processor'] or '?'}), "
            f"{results['runtime_seconds']:.0f} s in all.", ""]
    body = (_held_out_md(results["held_out_phantoms"]) + _slab_md(results["real_slab"])
            + _real_md(results.get("real_cases", {})) + _chest_md(results["out_of_domain_chest"]))
    return "\n".join(head + body)


# ----------------------------------------------------------------------------- main
def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def evaluate(args) -> dict:
    from flare_seg import __version__
    from flare_seg.predict import Segmenter, default_model_dir

    t0 = time.perf_counter()
    model_dir = args.model_dir or default_model_dir()
    (args.out / "qc").mkdir(parents=True, exist_ok=True)
    results = {"flare_seg_version": __version__,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine_info(), "model_dir": str(model_dir),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    segmenter = Segmenter.load(model_dir, device=args.device, threads=args.threads, engine=args.engine,
                               precision=args.precision)
    results["provenance"] = segmenter.provenance()
    results["held_out_phantoms"] = held_out_section(segmenter, args.out, args)
    if not args.shared_data.is_dir():
        log.warning("shared data folder %s not found: real slab and chest CTs skipped", args.shared_data)
    results["real_slab"] = slab_section(segmenter, args.shared_data, args.out)
    results["real_cases"] = real_cases_section(segmenter, args.shared_data, args.out)
    results["out_of_domain_chest"] = chest_section(segmenter, args.shared_data, args.out)
    results["qc_png"] = qc_pngs(results)
    results["qc_png_docs"] = copy_qc(results["qc_png"], args.docs)
    results["runtime_seconds"] = round(time.perf_counter() - t0, 1)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = evaluate(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        log.error("%s", err)
        return 1
    atomic.write_text(args.out / "results.json", json.dumps(results, indent=2, default=_json_default) + "\n")
    markdown = results_markdown(results)
    atomic.write_text(args.out / "results.md", markdown + "\n")
    print(markdown)
    log.info("wrote %s and %s", args.out / "results.json", args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
