"""Per-organ statistics of a label map over its CT: volume, HU, bounding box, components, field of view.

Computed on the input grid (the label map ``predict`` writes and the CT it read), so the figures are
in the scan's own voxels and mm. Connected components are 26-connected, counted with
connected-components-3d (cc3d). Field names and units are documented in ``docs/statistics.md``.
"""

from __future__ import annotations

import csv
import io as text_io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg import atomic
from flare_seg.extras import require
from flare_seg.geometry import Geometry
from flare_seg.labels import NAMES, ORGANS

log = logging.getLogger(__name__)

STATISTICS_SUFFIX = ".statistics.json"
CSV_NAME = "statistics.csv"
CSV_FIELDS = ("case", "organ", "present", "volume_ml", "voxels", "hu_mean", "hu_median", "hu_std",
              "bbox_size_mm_z", "bbox_size_mm_y", "bbox_size_mm_x", "bbox_lo_mm_lps", "bbox_hi_mm_lps",
              "components", "touches_field_of_view", "touched_faces")
_FACES = ("z_first", "z_last", "y_first", "y_last", "x_first", "x_last")


def count_components(mask: np.ndarray) -> int:
    """Number of 26-connected components of a binary mask (cc3d)."""
    import cc3d

    _, count = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=26,
                                         return_N=True)
    return int(count)


def _touched_faces(lo: np.ndarray, hi: np.ndarray, shape) -> list[str]:
    touched = []
    for axis in range(3):
        touched += [_FACES[2 * axis]] if lo[axis] == 0 else []
        touched += [_FACES[2 * axis + 1]] if hi[axis] == shape[axis] - 1 else []
    return touched


def _organ_entry(ct_hu: np.ndarray, mask: np.ndarray, geometry: Geometry) -> dict:
    voxels = int(mask.sum())
    if voxels == 0:
        return {"present": False, "volume_ml": 0.0, "voxels": 0, "hu_mean": None, "hu_median": None,
                "hu_std": None, "bbox": None, "components": 0, "touches_field_of_view": False, "touched_faces": []}
    where = np.nonzero(mask)
    lo = np.array([int(w.min()) for w in where])
    hi = np.array([int(w.max()) for w in where])
    crop = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
    hu = ct_hu[where].astype(np.float64)
    corners = [geometry.index_to_physical(lo - 0.5), geometry.index_to_physical(hi + 0.5)]
    faces = _touched_faces(lo, hi, mask.shape)
    return {"present": True, "volume_ml": round(voxels * geometry.voxel_volume_ml, 3), "voxels": voxels,
            "hu_mean": round(float(hu.mean()), 2), "hu_median": round(float(np.median(hu)), 2),
            "hu_std": round(float(hu.std()), 2),
            "bbox": {"index_lo_zyx": lo.tolist(), "index_hi_zyx": hi.tolist(),
                     "size_mm_zyx": [round(float(v), 2) for v in (hi - lo + 1) * np.asarray(geometry.spacing_mm)],
                     "lo_mm_lps": [round(float(v), 2) for v in np.minimum(*corners)],
                     "hi_mm_lps": [round(float(v), 2) for v in np.maximum(*corners)]},
            "components": count_components(mask[crop]), "touches_field_of_view": bool(faces),
            "touched_faces": faces}


def organ_statistics(ct_hu: np.ndarray, labels: np.ndarray, geometry: Geometry) -> dict[str, dict]:
    """``{organ name: entry}`` for the four organs (absent ones too, with ``present: False``)."""
    if ct_hu.shape != labels.shape or tuple(labels.shape) != tuple(geometry.shape):
        raise ValueError(f"CT {ct_hu.shape}, labels {labels.shape} and geometry {geometry.shape} differ in shape")
    return {NAMES[organ]: _organ_entry(ct_hu, labels == organ, geometry) for organ in ORGANS}


def statistics_path(label_path: str | os.PathLike) -> Path:
    """``out/<case>.nii.gz`` -> ``out/<case>.statistics.json``."""
    from flare_seg.io import image_suffix

    label_path = Path(label_path)
    suffix = image_suffix(label_path)
    stem = label_path.name[: -len(suffix)] if suffix else label_path.name
    return label_path.with_name(stem + STATISTICS_SUFFIX)


@dataclass(frozen=True)
class StatisticsOutput:
    """A per-case extra output of :func:`flare_seg.predict.segment_file`: ``<case>.statistics.json``."""

    stage = "statistics"

    def path_for(self, label_path: Path) -> Path:
        return statistics_path(label_path)

    def __call__(self, volume, labels: np.ndarray, label_path: Path, segmenter) -> dict:
        require("--statistics", "hospital", "cc3d")
        organs = organ_statistics(volume.array, labels, volume.geometry)
        path = self.path_for(label_path)
        document = {"input": volume.path, "labels": str(label_path), "spacing_mm_zyx": list(volume.geometry.spacing_mm),
                    "shape_zyx": list(volume.geometry.shape), "organs": organs}
        atomic.write_text(path, json.dumps(document, indent=2) + "\n")
        return {"statistics": organs, "statistics_json": str(path)}


def _csv_rows(case: str, organs: dict) -> list[dict]:
    rows = []
    for organ, entry in organs.items():
        bbox = entry.get("bbox") or {}
        size = bbox.get("size_mm_zyx") or [None] * 3
        rows.append({"case": case, "organ": organ, **{k: entry.get(k) for k in CSV_FIELDS[2:8]},
                     "bbox_size_mm_z": size[0], "bbox_size_mm_y": size[1], "bbox_size_mm_x": size[2],
                     "bbox_lo_mm_lps": " ".join(map(str, bbox.get("lo_mm_lps", []))),
                     "bbox_hi_mm_lps": " ".join(map(str, bbox.get("hi_mm_lps", []))),
                     "components": entry["components"], "touches_field_of_view": entry["touches_field_of_view"],
                     "touched_faces": " ".join(entry["touched_faces"])})
    return rows


def write_statistics_csv(records: list[dict], path: str | os.PathLike) -> int:
    """One CSV row per case and organ from run records; skipped cases are read from their JSON.

    Returns the number of cases written."""
    rows, cases = [], 0
    for record in records:
        organs = record.get("statistics")
        if organs is None and record.get("status") == "skipped":
            json_path = statistics_path(record["output"])
            organs = json.loads(json_path.read_text())["organs"] if json_path.exists() else None
        if organs is None:
            continue
        rows += _csv_rows(record["case"], organs)
        cases += 1
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())
    return cases
