"""``flare-seg phantom``: write synthetic abdominal CTs with FLARE labels as NIfTI.

Layout ``flare`` (default): ``OUT/imagesTr/<case>_0000.nii.gz`` + ``OUT/labelsTr/<case>.nii.gz``,
ready for ``flare-seg predict -i OUT/imagesTr``, ``flare-seg evaluate --gt OUT/labelsTr`` and
``python training/train_seg.py --data OUT``; ``flat`` puts both in OUT. Any size, spacing and
direction; the phantom is generated in canonical LPS and written so that the anatomy keeps its
physical place whatever the direction matrix.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from flare_seg.cli.args import int_triple, triple

log = logging.getLogger(__name__)

DIRECTIONS = {
    "identity": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    "ras": (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),  # typical NIfTI storage
    "permuted": (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0),
}


def _direction(text: str):
    from flare_seg.geometry import rotation_direction

    if text in DIRECTIONS:
        return DIRECTIONS[text]
    if text == "oblique":
        return rotation_direction((0.12, -0.08, 0.2))
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 9:
        raise argparse.ArgumentTypeError(f"direction: {', '.join(DIRECTIONS)}, oblique, or 9 numbers")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("-n", "--count", type=int, default=1, help="number of phantoms (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed; phantom i uses default_rng([seed, i])")
    p.add_argument("--shape", type=int_triple, default=(200, 512, 512), metavar="Z,Y,X")
    p.add_argument("--spacing", type=triple, default=(2.5, 0.8, 0.8), metavar="Z,Y,X", help="mm")
    p.add_argument("--direction", type=_direction, default=DIRECTIONS["identity"],
                   help="identity, ras, permuted, oblique, or 9 numbers (row-major ITK matrix)")
    p.add_argument("--mode", choices=("parametric", "labelmap"), default="parametric",
                   help="parametric anatomy, or CT synthesized around the bundled AMOS label map")
    p.add_argument("--layout", choices=("flare", "flat"), default="flare")
    p.add_argument("--prefix", default="phantom", help="case name prefix")
    p.add_argument("--qc", action="store_true", help="also write a QC PNG per case")


def written_geometry(shape_zyx, spacing_zyx, direction):
    """Geometry to write a canonical phantom with ``direction``, and the orientation record to use."""
    from flare_seg.geometry import Geometry, canonical_orientation

    orient = canonical_orientation(Geometry((1, 1, 1), (1.0, 1.0, 1.0), direction=tuple(direction)))
    inverse = np.argsort(orient.axes)
    shape = tuple(int(shape_zyx[k]) for k in inverse)
    spacing = tuple(float(spacing_zyx[k]) for k in inverse)
    half = np.asarray(shape[::-1]) * np.asarray(spacing[::-1]) / 2
    origin = tuple(float(v) for v in -(np.asarray(direction).reshape(3, 3) @ half))
    return Geometry(shape, spacing, origin, tuple(direction)), orient


def write_phantom(out: Path, case: str, ct, labels, spacing, direction, layout: str, qc: bool) -> Path:
    from flare_seg import io
    from flare_seg.geometry import from_canonical

    geometry, orient = written_geometry(ct.shape, spacing, direction)
    image_dir, label_dir = (out / "imagesTr", out / "labelsTr") if layout == "flare" else (out, out)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    ct_w = np.ascontiguousarray(from_canonical(ct, orient))
    lab_w = np.ascontiguousarray(from_canonical(labels, orient))
    io.write_image(ct_w, geometry, image_dir / f"{case}_0000.nii.gz")
    io.write_labels(lab_w, geometry, label_dir / f"{case}.nii.gz")
    if qc:
        from flare_seg.evaluation.qc import overlay_png

        overlay_png(ct_w, lab_w, geometry, out / f"{case}_qc.png", title=case)
    return image_dir / f"{case}_0000.nii.gz"


def run(args) -> int:
    from flare_seg.synth import phantom
    from flare_seg.training.synthetic import phantom_label_map

    amos = phantom_label_map() if args.mode == "labelmap" else None
    means = []
    for i in range(args.count):
        rng = np.random.default_rng([args.seed, i])
        t0 = time.perf_counter()
        if amos is not None:
            ct, labels = phantom.phantom_from_label_map(rng, amos[0], amos[1], source="amos")
            spacing = amos[1]
        else:
            ct, labels = phantom.make_phantom(rng, shape_zyx=args.shape, spacing_mm=args.spacing)
            spacing = args.spacing
        seconds = time.perf_counter() - t0
        case = f"{args.prefix}_{i:03d}"
        path = write_phantom(args.output, case, ct, labels, spacing, args.direction, args.layout, args.qc)
        mean_hu = phantom.organ_mean_hu(ct, labels)
        means.append(mean_hu)
        log.info("%s: %s in %.2f s -> %s", case, ct.shape, seconds, path)
    print("mean HU per organ (phantoms vs the real portal-venous slab):")
    for organ in ("liver", "kidney", "spleen", "pancreas"):
        values = [m[organ] for m in means if organ in m]
        real = phantom.REAL_SLAB_MEAN_HU.get(organ)
        mean = f"{np.mean(values):6.1f}" if values else "   n/a"
        print(f"  {organ:<9} phantom {mean}   real slab {real if real is not None else 'n/a'}")
    return 0
