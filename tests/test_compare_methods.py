"""benchmarks/compare_methods.py's rendering: rows gathered from several run folders, the run's
settings named above the tables, and a rerun that replaces only the generated part of the doc."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare_methods  # noqa: E402

ORGANS = compare_methods.ORGANS


def _case(dsc: float, far: float) -> dict:
    return {o: {"dsc": dsc, "nsd": dsc + 0.05, "precision": 0.9, "recall": dsc, "far_fp_ml": far} for o in ORGANS}


def _row(dsc: float, far: float) -> dict:
    return {"forward": {"params": 1000, "forward_s": 2.5, "peak_rss_bytes": 3e9}, "gflop": 878.4,
            "trained_params": 100, "train_seconds": 60.0,
            "scores": {"phantoms": [_case(dsc, far), _case(dsc - 0.1, far)], "amos_0018": [_case(dsc, 2 * far)]}}


def test_render_gathers_rows_names_the_settings_and_keeps_the_prose(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "settings.json").write_text(json.dumps({"steps": 1000, "train_phantoms": 8, "heldout_phantoms": 3,
                                                 "crop_zyx": [32, 64, 64], "lr": 0.001, "seed": 0, "spacing_mm": 4.0,
                                                 "local": [4, 16], "spatial_filters": 8, "threads": 2,
                                                 "cpu": "Test CPU"}))
    # rows come back in the table's order (ROWS), whichever folder holds them
    (b / "methods_so_far.json").write_text(json.dumps({"U-Net": _row(0.6, 10.0)}))
    (a / "methods_so_far.json").write_text(json.dumps({"SCN": _row(0.8, 1.5)}))
    partial = {"one organ each | partial-label loss": {"scores": {"phantoms": [_case(0.7, 0)]}}}
    (b / "partial_so_far.json").write_text(json.dumps(partial))
    doc = tmp_path / "comparison.md"
    begin, end = compare_methods.BEGIN, compare_methods.END
    doc.write_text(f"# Title\n\nprose before\n\n{begin}\nold tables\n{end}\n\nprose after\n")

    assert compare_methods.main(["--out", str(a), "--render", str(b), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n") and text.endswith("\n\nprose after\n")
    assert "old tables" not in text
    assert "Test CPU" in text and "1000 steps" in text and "crop 32 x 64 x 64" in text
    assert text.index("| SCN |") < text.index("| U-Net |")
    # phantoms: the mean over the two cases (0.80, 0.70) -> 0.75; far FP summed over organs and cases
    scn = next(line for line in text.splitlines() if line.startswith("| SCN |") and "far" not in line
               and "878.4" not in line)
    assert scn.split(" | ")[1].startswith("0.75 / 0.80 / 0.90 / 0.75")
    assert scn.rstrip(" |").endswith("12.0")  # 1.5 ml x 4 organs x 2 cases
    assert "| one organ each | partial-label loss | 0.700 | 0.700 | 0.700 | 0.700 | 0.700 |" in text

    # a rerun replaces the generated part again, once
    assert compare_methods.main(["--out", str(a), "--render", str(b), "--doc", str(doc)]) == 0
    assert doc.read_text() == text


def test_a_doc_without_markers_gets_them(tmp_path):
    doc = tmp_path / "new.md"
    assert compare_methods.into_doc(doc, "T") == f"{compare_methods.BEGIN}\nT\n{compare_methods.END}\n"
