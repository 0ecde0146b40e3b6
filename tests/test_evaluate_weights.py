"""scripts/evaluate_weights.py end to end on tiny random networks (small phantoms, the bundled real data)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED_DATA

from flare_seg import io
from flare_seg.evaluation import metrics

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "evaluate_weights.py"
ORGANS = ("liver", "kidney", "spleen", "pancreas")


def _load_script():
    spec = importlib.util.spec_from_file_location("evaluate_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_protocol(section: dict, protocol: str, n_cases: int) -> None:
    assert section["protocol"] == protocol
    assert section["cases"]["ok"] == [f"heldout_{i:03d}" for i in range(n_cases)]
    rows = section["per_case"]
    assert len(rows) == n_cases * len(ORGANS)
    for organ in ORGANS:  # the summary is the mean and spread of the per-case scores, in percent
        stats = section["summary"][organ]
        assert stats["n_cases"] == n_cases
        for metric in ("dsc", "nsd"):
            values = np.array([100.0 * r[metric] for r in rows if r["organ"] == organ])
            assert stats[f"{metric}_mean_pct"] == pytest.approx(values.mean(), abs=0.01)
            assert stats[f"{metric}_std_pct"] in (pytest.approx(values.std(), abs=0.01),
                                                  pytest.approx(values.std(ddof=1), abs=0.01))
    assert section["summary"]["mean_of_organs"]["n_cases"] == n_cases


@pytest.mark.slow
def test_evaluate_weights_tiny_models(tiny_model_dir, tmp_path, capsys):
    script = _load_script()
    out, docs = tmp_path / "eval", tmp_path / "docs"
    shared = tmp_path / "shared"  # the bundled real data, plus the slab standing in for amos_0018
    shared.mkdir()
    for folder in BUNDLED_DATA.iterdir():
        (shared / folder.name).symlink_to(folder)
    amos, slab_dir = shared / "amos_0018", BUNDLED_DATA / "upper_abdomen_slab"
    amos.mkdir()
    (amos / "amos_0018_ct_windowed.nii.gz").symlink_to(slab_dir / "ct.nii.gz")
    (amos / "amos_0018_labels_flare.nii.gz").symlink_to(slab_dir / "labels_flare_pseudo.nii.gz")
    rc = script.main(["--model-dir", str(tiny_model_dir), "--out", str(out), "--fast", "--phantoms", "2",
                      "--device", "cpu", "--docs", str(docs), "--no-progress", "--shared-data", str(shared)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    held = results["held_out_phantoms"]
    for protocol in ("flare21", "flare22"):
        _check_protocol(held[protocol], protocol, 2)
    assert held["flare22"]["tolerances_mm"] == {"liver": 5.0, "kidney": 3.0, "spleen": 3.0, "pancreas": 5.0}
    assert [c["seed"] for c in held["cases"]] == [[2024, 7, 0], [2024, 7, 1]]
    assert set(results["provenance"]["weights_sha256"]) == {"loc", "seg"}
    markdown = (out / "results.md").read_text()
    assert "| Liver |" in markdown and "NSD FLARE22" in markdown
    assert markdown.strip() in capsys.readouterr().out
    assert (out / "qc" / "qc_heldout_phantom.png").is_file() and (docs / "qc_heldout_phantom.png").is_file()

    chest = results["out_of_domain_chest"]
    found = chest["chest_above_diaphragm"]
    written, geometry, _ = io.read_image(out / "real" / "chest_above_diaphragm.nii.gz")
    for label, organ in enumerate(ORGANS, 1):  # the reported numbers are those of the written label map
        assert found["organ_voxels"][organ] == int((written == label).sum())
        assert found["organ_volumes_ml"][organ] == pytest.approx(
            int((written == label).sum()) * geometry.voxel_volume_ml, abs=0.01)
    assert (docs / "qc_chest_above_diaphragm.png").is_file()
    slab = results["real_slab"]
    assert slab["organs"]["kidney"]["status"] == "absent in GT"
    prediction, _, _ = io.read_image(out / "real" / "upper_abdomen_slab.nii.gz")
    truth, _, _ = io.read_image(BUNDLED_DATA / "upper_abdomen_slab" / "labels_flare_pseudo.nii.gz")
    for label, organ in ((1, "liver"), (3, "spleen"), (4, "pancreas")):  # recomputed independently
        assert slab["organs"][organ]["dsc"] == pytest.approx(metrics.dice(prediction == label, truth == label))
        assert slab["organs"][organ]["gt_ml"] > 0

    real = results["real_cases"]  # amos_0018 (here the slab) scored on all four organs; absent cases skipped
    amos, _, _ = io.read_image(out / "real" / "amos_0018.nii.gz")
    assert np.array_equal(amos, prediction)
    assert set(real["amos_0018"]["organs"]) == set(ORGANS)
    assert real["amos_0018"]["organs"]["liver"]["dsc"] == pytest.approx(slab["organs"]["liver"]["dsc"])
    assert "skipped" in real["head_neck"]
    assert (docs / "qc_amos_0018.png").is_file()
    assert "| amos_0018 | pancreas |" in markdown


def test_evaluate_weights_without_shared_data(tiny_model_dir, tmp_path):
    script = _load_script()
    out = tmp_path / "eval"
    rc = script.main(["--model-dir", str(tiny_model_dir), "--out", str(out), "--phantoms", "0", "--device", "cpu",
                      "--shared-data", str(tmp_path / "absent"), "--no-progress"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert "skipped" in results["held_out_phantoms"]
    assert "skipped" in results["real_slab"] and "skipped" in results["out_of_domain_chest"]
    assert all("skipped" in case for case in results["real_cases"].values())
    assert "skipped" in (out / "results.md").read_text()
