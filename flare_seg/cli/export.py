"""``flare-seg export [-m MODEL_DIR] -o OUT_DIR [--format onnx|openvino]``: the networks for the lean engines.

Writes ``OUT_DIR/{loc,seg}/`` with the split pieces (:mod:`flare_seg.export`), ``config.json``,
the source weights and ``export.json`` (opset, versions, sha256 of the source weights). ``-o``
may be ``-m`` itself (the bundled weights are exported in place).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-m", "--model-dir", type=Path, help="folder with loc/ and seg/ (default: bundled weights)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder (gets loc/ and seg/)")
    p.add_argument("--format", choices=("onnx", "openvino"), default="onnx",
                   help="onnx (default; both engines read it) or openvino IR (.xml + .bin)")


def run(args) -> int:
    from flare_seg.export import export
    from flare_seg.predict import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    args.output.mkdir(parents=True, exist_ok=True)
    records = export(model_dir, args.output, args.format)
    for net, record in records.items():
        pieces = ", ".join(f"{name} (halo {p['halo_z']})" for name, p in record["pieces"].items())
        print(f"{net}: {args.output / net} [{args.format}, opset {record['opset']}]: {pieces}")
    return 0
