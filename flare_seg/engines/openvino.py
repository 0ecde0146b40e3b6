"""OpenVINO engine (CPU) for the exported pieces; no TensorFlow, no Keras.

Compiled models are cached in a user cache folder keyed by the weights' sha256, the precision
and OpenVINO's version, so a cache never outlives what it was compiled from (OpenVINO also hashes
the model itself into each blob's name).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def native_precisions() -> set[str]:
    """The reduced precisions OpenVINO's CPU plugin computes natively here (``{"bf16"}`` on AMX or
    AVX512-BF16 CPUs, ``"fp16"`` where it lists FP16; empty on AVX2 CPUs)."""
    import openvino as ov

    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return {name for name, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in capabilities}


def version() -> str:
    import openvino

    return openvino.get_version()


def cache_dir(weights_sha256: str, precision: str, ov_version: str) -> Path:
    """``$XDG_CACHE_HOME/flare-seg/openvino/<version>/<sha256[:16]>-<precision>`` (default ``~/.cache``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    safe_version = "".join(c if c.isalnum() or c in "._-" else "_" for c in ov_version)
    return base / "flare-seg" / "openvino" / safe_version / f"{weights_sha256[:16]}-{precision}"


def _piece_path(folder: Path, name: str) -> Path:
    for suffix in (".xml", ".onnx"):  # IR when exported as such (faster to read), else the ONNX file
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise FileNotFoundError(f"{folder / name}.onnx: exported piece not found (run flare-seg export -m {folder.parent})")


def _core(cache: Path | None):
    import openvino as ov

    core = ov.Core()
    if cache is not None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except OSError as err:
            log.warning("OpenVINO model cache disabled: %s: %s", cache, err)
    return core


def piece_runner(folder: Path, record: dict, precision: str, threads: int | None, use_cache: bool = True):
    """``(run_piece(name, feeds), release, info)`` over OpenVINO compiled models of ``folder/<piece>.{xml,onnx}``."""
    ov_version = version()
    cache = cache_dir(record["source_weights"]["sha256"], precision, ov_version) if use_cache else None
    core = _core(cache)
    config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = {name: core.compile_model(str(_piece_path(folder, name)), "CPU", config) for name in record["pieces"]}
    actual = next(iter(compiled.values())).get_property("INFERENCE_PRECISION_HINT").get_type_name()  # e.g. "f32"
    if actual != _PRECISION_HINT[precision]:
        log.warning("OpenVINO runs %s on this CPU (asked for %s: no native support)", actual, precision)
    requests = {name: model.create_infer_request() for name, model in compiled.items()}

    def run_piece(name: str, feeds: dict):
        request = requests[name]
        if request is None:  # released after its last use: a fresh one (microseconds)
            request = requests[name] = compiled[name].create_infer_request()
        request.infer(feeds)
        return request.get_output_tensor(0).data.copy()  # the request's buffer is reused by its next call

    def release(name: str) -> None:
        """Free a finished piece's memory: its intermediate buffers (``release_memory``) and the
        request's own input and output tensors, which it keeps at their last (largest) size until
        the next call otherwise; RSS would add up over the pieces and the cases."""
        requests[name] = None
        compiled[name].release_memory()

    info = {"engine": "openvino", "engine_version": ov_version, "inference_precision": actual,
            "model_cache": str(cache) if cache is not None else None}
    return run_piece, release, info
