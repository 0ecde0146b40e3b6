"""``flare-seg evaluate``: DSC and NSD per case and organ with FLARE's rules, tables and plots.

Ground truth ``<case>.nii.gz`` (any image suffix; a ``_0000`` channel suffix is stripped) is matched
with prediction ``<case>.nii.gz`` (any image suffix). Spacing comes from the ground-truth header.
A prediction must lie on its ground truth's grid (FLARE never resampled): one that does not is an
error for that case, named in one line, and the other cases go on. A missing prediction counts as
all background (organs in the ground truth score 0), unless ``skip_missing`` skips it, as the
official script did by looping over the prediction files.

Rows are dicts ``{"case", "organ", "dsc", "nsd", "tolerance_mm", "status", "message"}`` with
status ``ok``, ``missing`` (scored as background), ``skipped`` or ``error`` (no scores).
Summaries are in percent, mean and (population) standard deviation over cases, like the paper's
Table 4.
"""

from __future__ import annotations

import csv
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flare_seg.atomic import atomic_path
from flare_seg.labels import NAMES, ORGANS

log = logging.getLogger(__name__)

ORGAN_NAMES: tuple[str, ...] = tuple(NAMES[label] for label in ORGANS)
SCORED = ("ok", "missing")
CSV_COLUMNS = ("case", "organ", "dsc", "nsd", "precision", "recall", "far_fp_ml", "tolerance_mm", "status", "message")
#: Seed 003's metrics and the far false positives, beside DSC/NSD in every row.
DETECTION = ("precision", "recall", "far_fp_ml")


# ----------------------------------------------------------------------------- matching files
def index_ground_truth(gt_dir: str | Path) -> dict[str, Path]:
    """``{case: path}`` of the image files in ``gt_dir``, sorted by case name."""
    from flare_seg.io import case_name, image_suffix

    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise FileNotFoundError(f"{gt_dir}: ground-truth folder does not exist")
    cases: dict[str, Path] = {}
    for path in sorted(gt_dir.iterdir()):
        if not path.is_file() or not image_suffix(path) or path.name.startswith("."):
            continue
        case = case_name(path)
        if case in cases:
            raise ValueError(f"{gt_dir}: two ground-truth files for case {case!r}: {cases[case].name}, {path.name}")
        cases[case] = path
    if not cases:
        raise ValueError(f"{gt_dir}: no ground-truth image files (.nii.gz, .nii, .nrrd, .mha, ...)")
    return dict(sorted(cases.items()))


def find_prediction(pred_dir: Path, case: str) -> Path | None:
    """The prediction file of ``case`` in ``pred_dir`` (``<case>.nii.gz`` first), or ``None``."""
    from flare_seg.io import IMAGE_SUFFIXES

    return next((pred_dir / f"{case}{s}" for s in IMAGE_SUFFIXES if (pred_dir / f"{case}{s}").is_file()), None)


# ----------------------------------------------------------------------------- scoring
def _as_labels(array: np.ndarray, mapping, path: Path) -> np.ndarray:
    from flare_seg.labels import map_labels

    if not np.issubdtype(array.dtype, np.integer):
        array = np.rint(array).astype(np.int32)
    if mapping is None:
        return array
    try:
        return map_labels(array, mapping)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: cannot map labels ({err})") from None


def _rows(case: str, scores: dict | None, tolerances: dict[str, float], status: str, message: str = "") -> list[dict]:
    return [{"case": case, "organ": organ,
             **{k: None if scores is None else scores[organ].get(k) for k in ("dsc", "nsd", *DETECTION)},
             "tolerance_mm": tolerances[organ], "status": status, "message": message} for organ in tolerances]


def evaluate_case(case: str, pred_path: Path | None, gt_path: Path, protocol="flare21",
                  gt_label_map=None, pred_label_map=None) -> list[dict]:
    """Rows of one case; a missing prediction (``pred_path`` None) is scored as all background.

    Unreadable files and a prediction off the ground-truth grid give ``error`` rows (not raised).
    """
    from flare_seg.evaluation.metrics import detection_scores, protocol_tolerances, score_case
    from flare_seg.io import read_image

    tolerances = protocol_tolerances(protocol)
    try:
        gt_array, gt_geometry, _ = read_image(gt_path)
        gt = _as_labels(gt_array, gt_label_map, gt_path)
        if pred_path is None:
            pred = np.zeros_like(gt)
        else:
            pred_array, pred_geometry, _ = read_image(pred_path)
            mismatch = gt_geometry.mismatch(pred_geometry)
            if mismatch:
                raise ValueError(f"{pred_path}: prediction is not on the ground truth's grid: {mismatch}")
            pred = _as_labels(pred_array, pred_label_map, pred_path)
    except (ValueError, FileNotFoundError) as err:
        log.error("case %s: ERROR %s", case, err)
        return _rows(case, None, tolerances, "error", str(err))
    _warn_unexpected_labels(case, gt, "ground truth")
    scores = score_case(pred, gt, gt_geometry.spacing_mm, tolerances)
    for organ, extra in detection_scores(pred, gt, gt_geometry.spacing_mm, tuple(tolerances)).items():
        scores[organ].update(extra)
    return _rows(case, scores, tolerances, "ok" if pred_path is not None else "missing")


def _warn_unexpected_labels(case: str, labels: np.ndarray, what: str) -> None:
    extra = sorted(int(v) for v in np.unique(labels) if int(v) not in NAMES)
    if extra:
        log.warning("case %s: %s has label values %s outside FLARE21's 0-4 (ignored); "
                    "a --label-map may be needed", case, what, extra[:10])


def evaluate_folder(pred_dir: str | Path, gt_dir: str | Path, protocol="flare21", label_map=None,
                    skip_missing: bool = False, *, gt_label_map=None, pred_label_map=None,
                    workers: int = 2) -> list[dict]:
    """Rows for every ground-truth case in ``gt_dir``, in case order.

    ``label_map`` (a name of :data:`flare_seg.labels.LABEL_MAPS` or ``{src: dst}``) maps both
    ground truth and prediction onto FLARE21 labels; ``gt_label_map``/``pred_label_map`` override
    it for one side. Cases are read and scored by ``workers`` threads.
    """
    from flare_seg.evaluation.metrics import protocol_tolerances

    tolerances = protocol_tolerances(protocol)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"{pred_dir}: prediction folder does not exist")
    cases = index_ground_truth(gt_dir)
    gt_map = label_map if gt_label_map is None else gt_label_map
    pred_map = label_map if pred_label_map is None else pred_label_map
    preds = {case: find_prediction(pred_dir, case) for case in cases}
    missing = [case for case, path in preds.items() if path is None]
    if missing:
        action = "skipped" if skip_missing else "scored as all background"
        log.warning("%d case(s) without prediction in %s, %s: %s", len(missing), pred_dir, action, ", ".join(missing))
    _warn_orphan_predictions(pred_dir, set(cases))

    def one(case: str) -> list[dict]:
        if preds[case] is None and skip_missing:
            return _rows(case, None, tolerances, "skipped", "no prediction")
        return evaluate_case(case, preds[case], cases[case], tolerances, gt_map, pred_map)

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        return [row for rows in pool.map(one, cases) for row in rows]


def _warn_orphan_predictions(pred_dir: Path, cases: set[str]) -> None:
    from flare_seg.io import case_name, image_suffix

    orphans = sorted(p.name for p in pred_dir.iterdir()
                     if p.is_file() and image_suffix(p) and case_name(p) not in cases)
    if orphans:
        log.warning("%d prediction file(s) have no ground truth and are ignored: %s",
                    len(orphans), ", ".join(orphans[:20]))


# ----------------------------------------------------------------------------- summaries
def _mean_std_pct(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    array = 100.0 * np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std())


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Mean and std (percent) of DSC and NSD per organ over the scored rows (``ok``/``missing``),
    plus ``"mean_of_organs"``: the same over each case's mean across organs."""
    scored = [row for row in rows if row["status"] in SCORED]
    organs = dict.fromkeys([*ORGAN_NAMES, *(row["organ"] for row in scored)])
    summary = {organ: _stats([row for row in scored if row["organ"] == organ]) for organ in organs}
    per_case: dict[str, list[dict]] = {}
    for row in scored:
        per_case.setdefault(row["case"], []).append(row)
    summary["mean_of_organs"] = _stats([
        {key: float(np.mean([r[key] for r in case_rows])) for key in ("dsc", "nsd", "precision", "recall")
         if all(r.get(key) is not None for r in case_rows)}
        | {"far_fp_ml": float(np.sum([r.get("far_fp_ml") or 0.0 for r in case_rows]))}
        for case_rows in per_case.values()])
    return summary


def _stats(rows: list[dict]) -> dict:
    dsc_mean, dsc_std = _mean_std_pct([row["dsc"] for row in rows])
    nsd_mean, nsd_std = _mean_std_pct([row["nsd"] for row in rows])
    stats = {"dsc_mean_pct": dsc_mean, "dsc_std_pct": dsc_std, "nsd_mean_pct": nsd_mean,
             "nsd_std_pct": nsd_std, "n_cases": len(rows)}
    for key in ("precision", "recall"):
        mean, std = _mean_std_pct([row[key] for row in rows if row.get(key) is not None])
        stats.update({f"{key}_mean_pct": mean, f"{key}_std_pct": std})
    far = [row["far_fp_ml"] for row in rows if row.get("far_fp_ml") is not None]
    stats["far_fp_ml_total"] = float(np.sum(far)) if far else None
    return stats


def load_folds(path: str | Path) -> list[list[str]]:
    """Case names per fold from the training fold file ``{"seed": 0, "folds": [[case, ...], ...]}``."""
    from flare_seg.io import case_name, image_suffix

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: fold file does not exist") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read fold file ({err})") from None
    folds = data.get("folds") if isinstance(data, dict) else None
    if not isinstance(folds, list) or not folds or not all(isinstance(f, list) for f in folds):
        raise ValueError(f"{path}: needs a JSON object with \"folds\": a non-empty list of lists of case names")
    return [[case_name(str(c)) if image_suffix(str(c)) else str(c) for c in fold] for fold in folds]


def fold_table(rows: list[dict], folds: list[list[str]]) -> list[tuple[str, dict]]:
    """Table 4 rows: ``("Fold-1", summary), ..., ("Average", summary)``; the average pools every
    case of every fold (equal to the mean of the fold means when folds have equal sizes)."""
    evaluated = {row["case"] for row in rows if row["status"] in SCORED}
    in_folds = {case for fold in folds for case in fold}
    absent = sorted(in_folds - evaluated)
    if absent:
        log.warning("%d case(s) of the fold file were not scored: %s", len(absent), ", ".join(absent[:20]))
    outside = sorted(evaluated - in_folds)
    if outside:
        log.warning("%d scored case(s) are in no fold and left out of the fold table: %s",
                    len(outside), ", ".join(outside[:20]))
    table = [(f"Fold-{k}", summarize([row for row in rows if row["case"] in set(fold)]))
             for k, fold in enumerate(folds, start=1)]
    table.append(("Average", summarize([row for row in rows if row["case"] in in_folds])))
    return table


def _cell(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.2f} ± {std:.2f}"


def format_table(table: list[tuple[str, dict]], organs: tuple[str, ...] = ORGAN_NAMES) -> str:
    """Text table in the paper's Table 4 layout: one line per ``(label, summary)``, columns
    DSC and NSD (percent, mean ± std) per organ."""
    label_width = max([len("Organ")] + [len(label) for label, _ in table])
    cell = 13  # "100.00 ± 0.00"
    head1 = " " * label_width + "".join(f" | {organ.capitalize():^{2 * cell + 1}}" for organ in organs)
    head2 = " " * label_width + "".join(f" | {'DSC':^{cell}} {'NSD':^{cell}}" for _ in organs)
    lines = [head1.rstrip(), head2.rstrip(), "-" * len(head2)]
    for label, summary in table:
        cells = "".join(
            f" | {_cell(summary[o]['dsc_mean_pct'], summary[o]['dsc_std_pct']):>{cell}}"
            f" {_cell(summary[o]['nsd_mean_pct'], summary[o]['nsd_std_pct']):>{cell}}" for o in organs)
        lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)


def _ml(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_detection_table(table: list[tuple[str, dict]], organs: tuple[str, ...] = ORGAN_NAMES) -> str:
    """Text table of precision and recall (percent, mean ± std) per organ and the far false
    positives (ml, summed over cases; > :data:`flare_seg.evaluation.metrics.FAR_MM` mm from the organ)."""
    label_width = max([len("Organ")] + [len(label) for label, _ in table])
    cell = 13
    head1 = " " * label_width + "".join(f" | {organ.capitalize():^{3 * cell + 2}}" for organ in organs)
    head2 = " " * label_width + "".join(f" | {'Precision':^{cell}} {'Recall':^{cell}} {'far FP ml':^{cell}}"
                                        for _ in organs)
    lines = [head1.rstrip(), head2.rstrip(), "-" * len(head2)]
    for label, summary in table:
        cells = "".join(
            f" | {_cell(summary[o]['precision_mean_pct'], summary[o]['precision_std_pct']):>{cell}}"
            f" {_cell(summary[o]['recall_mean_pct'], summary[o]['recall_std_pct']):>{cell}}"
            f" {_ml(summary[o]['far_fp_ml_total']):>{cell}}"
            for o in organs)
        lines.append(f"{label:<{label_width}}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- outputs
def write_csv(rows: list[dict], path: str | Path) -> None:
    """One line per case and organ: case, organ, dsc, nsd, tolerance_mm, status, message."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})


def plot_boxplots(rows: list[dict], path: str | Path) -> None:
    """PNG with a DSC panel and an NSD panel, one box per organ (percent, scored cases)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state (Agg canvas)

    scored = [row for row in rows if row["status"] in SCORED]
    organs = list(dict.fromkeys(row["organ"] for row in scored)) or list(ORGAN_NAMES)
    figure = Figure(figsize=(4 + 1.2 * len(organs), 4), layout="constrained")
    for axes, metric in zip(figure.subplots(1, 2), ("dsc", "nsd"), strict=True):
        data = [[100.0 * row[metric] for row in scored if row["organ"] == organ] for organ in organs]
        if scored:
            axes.boxplot(data, showmeans=True)
        axes.set_xticks(range(1, len(organs) + 1), [o.capitalize() for o in organs])
        axes.set_title(f"{metric.upper()} ({len(set(row['case'] for row in scored))} cases)")
        axes.set_ylabel("percent")
        axes.set_ylim(-2, 102)
        axes.grid(axis="y", alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")


def summary_document(rows: list[dict], protocol, folds: list[list[str]] | None = None) -> dict:
    """JSON-ready summary: protocol, case lists by status, per-organ statistics, fold table."""
    from flare_seg.evaluation.metrics import protocol_tolerances

    by_status: dict[str, list[str]] = {}
    for row in rows:
        cases = by_status.setdefault(row["status"], [])
        if row["case"] not in cases:
            cases.append(row["case"])
    errors = {row["case"]: row["message"] for row in rows if row["status"] == "error"}
    document = {"protocol": protocol if isinstance(protocol, str) else "custom",
                "tolerances_mm": protocol_tolerances(protocol),
                "cases": {status: by_status.get(status, []) for status in ("ok", "missing", "skipped", "error")},
                "errors": errors, "summary": summarize(rows)}
    if folds is not None:
        document["folds"] = [{"fold": label, "summary": summary} for label, summary in fold_table(rows, folds)]
    return document
