"""Copy the real label maps the domain-randomised generator trains on into ``flare_seg/data/label_maps/``.

Reads the TotalSegmentator-dataset maps (117 structures, CC BY 4.0) from ``../shared/data`` (or
``--shared``), reorients them to canonical LPS ``(z, y, x)``, crops them to the labelled region
plus 10 mm and resamples them (nearest neighbour) to 2 mm isotropic, so the six maps take about
2 MB. Each is written as a compressed uint8 ``.npz`` with ``labels``, ``spacing_mm`` and
``source``. amos_0018 and head_neck_negative (s0003) are *not* copied: they select checkpoints.

    python scripts/prepare_label_maps.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import io as _io
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from flare_seg.atomic import write_bytes
from flare_seg.geometry import to_canonical
from flare_seg.io import read_image
from flare_seg.preprocess import bounding_box

log = logging.getLogger("prepare_label_maps")
REPO = Path(__file__).resolve().parents[1]
TRAINING_SUBJECTS = ("s0001", "s0004", "s0006", "s0011", "s0327", "s0328")
TARGET_MM = 2.0


def resample_nearest(labels: np.ndarray, spacing_mm, target_mm: float) -> np.ndarray:
    """Nearest-neighbour resampling of a label map to ``target_mm`` isotropic (same physical extent)."""
    shape = [max(1, int(round(n * s / target_mm))) for n, s in zip(labels.shape, spacing_mm, strict=True)]
    coords = np.meshgrid(*[(np.arange(m) + 0.5) * target_mm / s - 0.5 for m, s in zip(shape, spacing_mm,
                                                                                         strict=True)],
                         indexing="ij", sparse=True)
    return ndi.map_coordinates(labels, np.broadcast_arrays(*coords), order=0, mode="nearest").astype(np.uint8)


def prepare(path: Path, margin_mm: float = 10.0) -> tuple[np.ndarray, tuple[float, float, float]]:
    array, geometry, _ = read_image(path)
    canon, geo, _ = to_canonical(array, geometry)
    box = bounding_box(canon > 0)
    margin = [int(np.ceil(margin_mm / s)) for s in geo.spacing_mm]
    crop = tuple(slice(max(lo - m, 0), hi + m + 1) for lo, hi, m in zip(box[0], box[1], margin, strict=True))
    return resample_nearest(np.ascontiguousarray(canon[crop]), geo.spacing_mm, TARGET_MM), (TARGET_MM,) * 3


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = p.parse_args()
    out = REPO / "flare_seg" / "data" / "label_maps"
    out.mkdir(parents=True, exist_ok=True)
    for subject in TRAINING_SUBJECTS:
        labels, spacing = prepare(args.shared / "totalseg_label_maps" / f"{subject}_labels117.nii.gz")
        buffer = _io.BytesIO()
        np.savez_compressed(buffer, labels=labels, spacing_mm=np.asarray(spacing), source="totalseg117")
        write_bytes(out / f"totalseg_{subject}.npz", buffer.getvalue())
        log.info("%s: %s at %s mm, %d structures", subject, labels.shape, spacing, len(np.unique(labels)) - 1)


if __name__ == "__main__":
    main()
