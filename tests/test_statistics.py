"""Organ statistics: hand-worked values, cc3d against scipy, and the CLI's JSON + CSV."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("cc3d")

from flare_seg import io  # noqa: E402
from flare_seg.cli.main import main as cli  # noqa: E402
from flare_seg.geometry import Geometry  # noqa: E402
from flare_seg.statistics import count_components, organ_statistics  # noqa: E402


def test_statistics_by_hand():
    geometry = Geometry((4, 6, 6), (2.0, 1.0, 0.5), (10.0, 20.0, 30.0))
    ct = np.zeros(geometry.shape, np.int16)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # liver: two 2x2x2 cubes one voxel apart -> 2 components
    ct[1:3, 1:3, 1:3] = 50
    labels[1:3, 4:6, 4:6] = 1
    ct[1:3, 4:6, 4:6] = 70
    labels[0, 0, 0] = 3  # spleen: one voxel in the corner
    ct[0, 0, 0] = -10
    stats = organ_statistics(ct, labels, geometry)
    liver, spleen = stats["liver"], stats["spleen"]
    assert liver["voxels"] == 16 and liver["volume_ml"] == pytest.approx(16 * 2.0 * 1.0 * 0.5 / 1000)
    assert (liver["hu_mean"], liver["hu_median"], liver["hu_std"]) == (60.0, 60.0, 10.0)
    assert liver["components"] == 2
    assert liver["bbox"]["index_lo_zyx"] == [1, 1, 1] and liver["bbox"]["index_hi_zyx"] == [2, 5, 5]
    assert liver["bbox"]["size_mm_zyx"] == [4.0, 5.0, 2.5]
    # outer faces in LPS (x, y, z): origin (10, 20, 30) + (index -/+ 0.5) * spacing (0.5, 1, 2)
    assert liver["bbox"]["lo_mm_lps"] == [10.25, 20.5, 31.0] and liver["bbox"]["hi_mm_lps"] == [12.75, 25.5, 35.0]
    assert liver["touches_field_of_view"] and liver["touched_faces"] == ["y_last", "x_last"]
    assert spleen["touched_faces"] == ["z_first", "y_first", "x_first"] and spleen["hu_std"] == 0.0
    assert stats["kidney"] == {"present": False, "volume_ml": 0.0, "voxels": 0, "hu_mean": None, "hu_median": None,
                               "hu_std": None, "bbox": None, "components": 0, "touches_field_of_view": False,
                               "touched_faces": []}


def test_cc3d_counts_like_scipy_with_26_connectivity(rng):
    structure = np.ones((3, 3, 3), dtype=bool)
    for density in (0.05, 0.2, 0.3):
        mask = rng.random((20, 24, 28)) < density
        assert count_components(mask) == ndimage.label(mask, structure=structure)[1]
    diagonal = np.zeros((3, 3, 3), bool)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = True  # touch by a corner only: one 26-component
    assert count_components(diagonal) == 1


def test_cli_statistics_json_and_csv_match_the_written_labels(tmp_path, tiny_model_dir):
    from flare_seg.synth import phantom

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for seed in (0, 1):
        ct, _ = phantom.make_phantom(np.random.default_rng(seed), shape_zyx=(40, 80, 80), spacing_mm=(5.0, 4.0, 4.0))
        io.write_image(ct, Geometry(ct.shape, (5.0, 4.0, 4.0)), inputs / f"case{seed}_0000.nii.gz")
    out = tmp_path / "out"
    args = ["predict", "-i", str(inputs), "-o", str(out), "-m", str(tiny_model_dir), "--statistics", "--no-progress"]
    assert cli(args + ["--report", str(out / "report.json")]) == 0
    for seed in (0, 1):
        document = json.loads((out / f"case{seed}.statistics.json").read_text())
        volume = io.read_ct(inputs / f"case{seed}_0000.nii.gz")
        labels, _, _ = io.read_image(out / f"case{seed}.nii.gz")
        assert document["organs"] == json.loads(json.dumps(organ_statistics(volume.array, labels, volume.geometry)))
    with open(out / "statistics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["case"], r["organ"]) for r in rows] == [(f"case{s}", o) for s in (0, 1)
                                                       for o in ("liver", "kidney", "spleen", "pancreas")]
    first = json.loads((out / "case0.statistics.json").read_text())["organs"]["liver"]
    assert float(rows[0]["volume_ml"]) == first["volume_ml"] and int(rows[0]["components"]) == first["components"]
    before = (out / "statistics.csv").read_text()
    assert cli(args + ["--skip-existing"]) == 0  # a resumed run still lists the skipped cases, from their JSON
    assert (out / "statistics.csv").read_text() == before
