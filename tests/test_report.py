"""The typed per-case report and its one serialisation."""

import json

import pytest

from flare_seg.geometry import Geometry
from flare_seg.report import BoxReport, CaseReport, GridReport


def test_error_record_holds_only_what_happened():
    report = CaseReport("c1", "in/c1_0000.nii.gz", "out/c1.nii.gz")
    report.fail("in/c1_0000.nii.gz: truncated gzip stream")
    assert report.to_dict() == {"case": "c1", "input": "in/c1_0000.nii.gz", "output": "out/c1.nii.gz",
                                "status": "error", "error": "in/c1_0000.nii.gz: truncated gzip stream",
                                "warnings": [], "notes": []}


def test_full_record_serialises_nested_dataclasses_to_json():
    geometry = Geometry((10, 20, 30), (2.0, 1.0, 1.0))
    report = CaseReport("c2", localizer=GridReport([32, 48, 48], 6.0),
                        box=BoxReport.from_box(((0, 2, 3), (9, 5, 7)), geometry, (10, 20, 30)),
                        organ_volumes_ml={"liver": 1.5}, seconds={"read": 0.1})
    document = json.loads(json.dumps(report.to_dict()))
    assert document["localizer"] == {"input_shape_zyx": [32, 48, 48], "spacing_mm": 6.0}
    # lo z == 0 touches the border; sizes are voxel counts times spacing
    assert document["box"]["touches_border"] is True
    assert document["box"]["size_mm_zyx"] == [20.0, 4.0, 5.0]
    assert "segmenter" not in document and "memory" not in document


def test_box_inside_the_image_does_not_touch_the_border():
    geometry = Geometry((10, 20, 30), (1.0, 1.0, 1.0))
    box = BoxReport.from_box(((1, 1, 1), (8, 18, 28)), geometry, (10, 20, 30))
    assert box.touches_border is False
    assert box.corners_mm_lps == [[0.5, 0.5, 0.5], [28.5, 18.5, 8.5]]


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="status"):
        CaseReport("c", status="done")
