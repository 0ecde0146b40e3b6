"""ONNX Runtime engine (CPU execution provider) for the exported pieces; no TensorFlow, no Keras."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def piece_runner(folder: Path, record: dict, precision: str, threads: int | None):
    """``(run_piece(name, feeds), release, info)`` over ONNX Runtime sessions of ``folder/<piece>.onnx``."""
    import onnxruntime as ort

    if precision != "fp32":
        raise ValueError(f"--precision {precision}: the onnxruntime engine runs fp32 only (use --engine openvino)")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False  # the arena keeps every slab size's peak: RSS would not come back
    if threads:
        options.intra_op_num_threads = int(threads)
    sessions = {}
    for name in record["pieces"]:
        path = folder / f"{name}.onnx"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: exported piece not found (run flare-seg export -m {folder.parent})")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_piece(name: str, feeds: dict):
        return sessions[name].run(None, feeds)[0]

    return run_piece, None, {"engine": "onnxruntime", "engine_version": ort.__version__, "inference_precision": "fp32"}
