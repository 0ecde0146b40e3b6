"""``flare-seg evaluate`` end to end on tiny synthetic label volumes written as NIfTI files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flare_seg.evaluation import evaluate
from flare_seg.geometry import Geometry
from flare_seg.io import write_labels
from flare_seg.labels import KIDNEY, LIVER, PANCREAS, SPLEEN

GEOMETRY = Geometry(shape=(12, 16, 16), spacing_mm=(3.0, 1.5, 1.25), origin_mm=(10.0, -5.0, 3.0))
#: NSD (1 mm) of a 4-voxel cube shifted one z step at spacing (3, 1.5, 1.25) mm: worked out by
#: hand from the surfel classes in tests/test_metrics.py (shifted_cube_nsd_at_zero_distance).
SHIFTED_LIVER_NSD_1MM = 0.7696435664613599


def phantom_labels(pancreas: bool = True, left_kidney_value: int = KIDNEY) -> np.ndarray:
    labels = np.zeros(GEOMETRY.shape, np.uint8)
    labels[2:6, 2:6, 2:6] = LIVER
    labels[2:5, 9:12, 2:4] = KIDNEY  # right kidney
    labels[2:5, 9:12, 12:14] = left_kidney_value  # left kidney (13 in FLARE22's label set)
    labels[7:10, 2:5, 9:12] = SPLEEN
    if pancreas:
        labels[8:10, 10:12, 6:11] = PANCREAS
    return labels


@pytest.fixture
def dataset(tmp_path) -> tuple[Path, Path]:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = phantom_labels()
    for case in ("perfect", "shifted", "offgrid", "missing"):
        write_labels(gt, GEOMETRY, gt_dir / f"{case}.nii.gz")
    write_labels(phantom_labels(pancreas=False), GEOMETRY, gt_dir / "nopancreas.nii.gz")
    write_labels(gt, GEOMETRY, pred_dir / "perfect.nii.gz")
    shifted = gt.copy()
    shifted[shifted == LIVER] = 0
    shifted[3:7, 2:6, 2:6] = LIVER  # one z step (3 mm) further
    write_labels(shifted, GEOMETRY, pred_dir / "shifted.nii.gz")
    other_grid = Geometry(GEOMETRY.shape, (3.0, 1.5, 1.3), GEOMETRY.origin_mm)
    write_labels(gt, other_grid, pred_dir / "offgrid.nii.gz")
    write_labels(phantom_labels(pancreas=False), GEOMETRY, pred_dir / "nopancreas.nii.gz")
    return pred_dir, gt_dir


def by_case(rows: list[dict]) -> dict[str, dict[str, dict]]:
    table: dict[str, dict[str, dict]] = {}
    for row in rows:
        table.setdefault(row["case"], {})[row["organ"]] = row
    return table


def test_evaluate_folder_scores_each_case_by_the_rules(dataset, caplog):
    pred_dir, gt_dir = dataset
    rows = by_case(evaluate.evaluate_folder(pred_dir, gt_dir))
    assert list(rows) == ["missing", "nopancreas", "offgrid", "perfect", "shifted"]
    assert all(r["dsc"] == 1.0 and r["nsd"] == 1.0 and r["status"] == "ok" for r in rows["perfect"].values())
    assert rows["shifted"]["liver"]["dsc"] == 0.75
    assert rows["shifted"]["liver"]["nsd"] == pytest.approx(SHIFTED_LIVER_NSD_1MM, rel=1e-12)
    assert rows["shifted"]["spleen"]["nsd"] == 1.0
    assert rows["nopancreas"]["pancreas"]["dsc"] == rows["nopancreas"]["pancreas"]["nsd"] == 1.0  # absent in both
    # Missing prediction: all background, every organ of the ground truth scores 0.
    assert {(r["status"], r["dsc"], r["nsd"]) for r in rows["missing"].values()} == {("missing", 0.0, 0.0)}
    # Off-grid prediction: an error for that case only, naming the file and the difference.
    offgrid = rows["offgrid"]["liver"]
    assert offgrid["status"] == "error" and offgrid["dsc"] is None
    assert "offgrid.nii.gz" in offgrid["message"] and "spacing differs" in offgrid["message"]
    assert any("case offgrid: ERROR" in message for message in caplog.messages)


def test_flare22_protocol_and_skip_missing(dataset):
    pred_dir, gt_dir = dataset
    rows = by_case(evaluate.evaluate_folder(pred_dir, gt_dir, protocol="flare22", skip_missing=True))
    assert rows["shifted"]["liver"]["nsd"] == 1.0 and rows["shifted"]["liver"]["tolerance_mm"] == 5.0
    assert {r["status"] for r in rows["missing"].values()} == {"skipped"}
    summary = evaluate.summarize([r for case in rows.values() for r in case.values()])
    assert summary["liver"]["n_cases"] == 3  # perfect, shifted, nopancreas
    assert summary["liver"]["dsc_mean_pct"] == pytest.approx(100 * (1 + 0.75 + 1) / 3)


def test_label_map_merges_split_kidneys(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_labels(phantom_labels(left_kidney_value=13), GEOMETRY, gt_dir / "c1_0000.nii.gz")  # FLARE22 labels
    write_labels(phantom_labels(), GEOMETRY, pred_dir / "c1.nii.gz")  # FLARE21 labels
    unmapped = by_case(evaluate.evaluate_folder(pred_dir, gt_dir))["c1"]["kidney"]
    assert unmapped["dsc"] == pytest.approx(2 * 18 / (18 + 36))  # only the right kidney counted in GT
    mapped = by_case(evaluate.evaluate_folder(pred_dir, gt_dir, label_map="flare22"))["c1"]
    assert all(r["dsc"] == 1.0 and r["nsd"] == 1.0 for r in mapped.values())
    pairs = by_case(evaluate.evaluate_folder(pred_dir, gt_dir, gt_label_map={1: 1, 2: 2, 3: 3, 4: 4, 13: 2}))
    assert pairs["c1"]["kidney"]["dsc"] == 1.0


def test_summary_and_fold_tables(dataset):
    pred_dir, gt_dir = dataset
    rows = evaluate.evaluate_folder(pred_dir, gt_dir)
    table = evaluate.fold_table(rows, [["perfect", "shifted"], ["missing", "nopancreas"]])
    assert [label for label, _ in table] == ["Fold-1", "Fold-2", "Average"]
    fold1 = table[0][1]["liver"]
    assert (fold1["dsc_mean_pct"], fold1["dsc_std_pct"], fold1["n_cases"]) == (87.5, 12.5, 2)
    assert table[1][1]["pancreas"]["dsc_mean_pct"] == 50.0  # missing 0, absent in both 1
    assert table[2][1]["liver"]["dsc_mean_pct"] == pytest.approx(100 * (1 + 0.75 + 0 + 1) / 4)
    text = evaluate.format_table(table)
    lines = text.splitlines()
    assert "Liver" in lines[0] and "Pancreas" in lines[0] and lines[1].count("DSC") == 4
    assert lines[3].startswith("Fold-1") and "87.50 ± 12.50" in lines[3] and lines[-1].startswith("Average")


def test_cli_writes_csv_json_png_and_fails_on_the_error_case(dataset, tmp_path, capsys):
    from flare_seg.cli.main import main

    pred_dir, gt_dir = dataset
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"seed": 0, "folds": [["perfect", "shifted"], ["missing", "nopancreas.nii.gz"]]}))
    out_csv, out_json, out_png = tmp_path / "scores.csv", tmp_path / "summary.json", tmp_path / "box.png"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--csv", str(out_csv),
                 "--summary-json", str(out_json), "--plot", str(out_png), "--folds", str(folds)])
    assert code == 1  # the off-grid case is an error
    printed = capsys.readouterr().out
    assert "All cases" in printed and "Fold-2" in printed and "errors 1" in printed
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5 * 4 and set(rows[0]) == set(evaluate.CSV_COLUMNS)
    shifted_liver = next(r for r in rows if r["case"] == "shifted" and r["organ"] == "liver")
    assert float(shifted_liver["dsc"]) == 0.75 and shifted_liver["status"] == "ok"
    document = json.loads(out_json.read_text())
    assert document["cases"]["error"] == ["offgrid"] and document["cases"]["missing"] == ["missing"]
    assert document["tolerances_mm"]["liver"] == 1.0 and len(document["folds"]) == 3
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_exit_zero_without_errors_and_bad_inputs(dataset, tmp_path):
    from flare_seg.cli.main import main

    pred_dir, gt_dir = dataset
    (gt_dir / "offgrid.nii.gz").unlink()
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--protocol", "flare22", "-q"]) == 0
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(tmp_path / "nope"), "-q"]) == 2
    bad_folds = tmp_path / "folds.json"
    bad_folds.write_text(json.dumps({"folds": "a,b"}))
    with pytest.raises(ValueError, match="folds.json"):
        evaluate.load_folds(bad_folds)
