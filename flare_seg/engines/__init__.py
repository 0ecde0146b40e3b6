"""Inference engines behind one interface: ``predict(x) -> {output: array}`` per network.

* ``openvino`` and ``onnxruntime`` run the exported pieces (:mod:`flare_seg.export`) split for
  bounded memory (:mod:`flare_seg.engines.split`); they import neither TensorFlow nor Keras.
* ``tensorflow`` runs the Keras model (GPU hosts; GPU memory controls in :mod:`flare_seg.runtime`).

The CPU default is the fastest engine at equal output in ``benchmarks/bench_engines.py``
(``docs/benchmarks.md``); on a GPU host it is TensorFlow.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ENGINES = ("openvino", "onnxruntime", "tensorflow")
PRECISIONS = ("fp32", "bf16", "fp16")
#: What ``--precision`` accepts: a precision, or ``auto`` (:func:`resolve_precision`).
PRECISION_CHOICES = PRECISIONS + ("auto",)
#: The benchmark's winner on the CPU at equal output (docs/benchmarks.md).
DEFAULT_CPU_ENGINE = "openvino"
EXPORTED = ("openvino", "onnxruntime")


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Between pieces the engines free their working buffers, but glibc keeps freed memory mapped, so
    without this each piece's peak stays in the RSS and the process's peak adds up across pieces
    (measured: 176 MB kept after the localizer on a 512x512x300 case)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        import ctypes.util

        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible (NVML; no framework import)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver or no device all mean: no GPU
        return False


def choose_engine(engine: str | None, device: str) -> str:
    """``engine`` as given, else TensorFlow on a GPU host (``device`` gpu, or auto with a GPU), else the CPU default."""
    if engine is not None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        return engine
    if device == "gpu" or (device == "auto" and gpu_present()):
        return "tensorflow"
    return DEFAULT_CPU_ENGINE


def resolve_precision(precision: str, engine: str) -> str:
    """``precision``, with ``auto`` made concrete for ``engine`` on this machine.

    ``auto`` is bf16 on the OpenVINO engine where the CPU computes bf16 natively (OpenVINO lists
    ``BF16`` among the CPU's optimization capabilities: AMX, AVX512-BF16), else fp32. Measured
    there: 1.9x faster per fresh process, same labels on 100 % of the voxels of a real CT, mean
    DSC change -0.0002 on held-out phantoms (docs/benchmarks.md). The TensorFlow and ONNX Runtime
    engines get fp32 (their reduced precisions are not measured to keep the labels)."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    if precision != "auto":
        return precision
    if engine == "openvino":
        from flare_seg.engines.openvino import native_precisions

        if "bf16" in native_precisions():
            log.info("--precision auto: bf16 (OpenVINO computes bf16 natively on this CPU)")
            return "bf16"
    log.info("--precision auto: fp32 on the %s engine%s", engine,
             " (no native bf16 on this CPU)" if engine == "openvino" else "")
    return "fp32"


def is_exported(model_dir: Path) -> bool:
    """Whether ``model_dir/{loc,seg}`` both hold an export record."""
    from flare_seg.export import EXPORT_FILE

    return all((Path(model_dir) / net / EXPORT_FILE).is_file() for net in ("loc", "seg"))


def read_export_record(folder: Path) -> dict:
    """``folder/export.json``, checked against the weights it was exported from (a stale export is refused)."""
    from flare_seg.export import EXPORT_FILE
    from flare_seg.predict import WEIGHTS_FILE, sha256_of

    path = folder / EXPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no exported network here (run flare-seg export -m {folder.parent} "
                                f"-o {folder.parent})")
    try:
        record = json.loads(path.read_text())
        expected_sha = record["source_weights"]["sha256"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid export record ({type(err).__name__}: {err})") from None
    weights = folder / WEIGHTS_FILE
    if weights.is_file() and sha256_of(weights) != expected_sha:
        raise ValueError(f"{path}: exported from weights sha256 {expected_sha[:12]}…, but {weights.name} differs "
                         f"(stale export: run flare-seg export -m {folder.parent} -o {folder.parent})")
    return record


def load_exported(folder: str | Path, expected: type, engine: str, precision: str = "fp32",
                  threads: int | None = None, slab_z: int | None = None):
    """A :class:`flare_seg.predict.LoadedModel` whose ``predict`` runs ``engine`` on the exported pieces."""
    from flare_seg.config import load_config
    from flare_seg.engines.split import DEFAULT_SLAB_Z, SplitNet
    from flare_seg.predict import CONFIG_FILE, LoadedModel

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    folder = Path(folder)
    config = load_config(folder / CONFIG_FILE)
    if not isinstance(config, expected):
        raise ValueError(f"{folder / CONFIG_FILE}: holds a {type(config).__name__}, expected {expected.__name__}")
    record = read_export_record(folder)
    if engine == "openvino":
        from flare_seg.engines.openvino import piece_runner
    elif engine == "onnxruntime":
        from flare_seg.engines.onnxruntime import piece_runner
    else:
        raise ValueError(f"engine {engine!r} does not run exported files (one of {', '.join(EXPORTED)})")
    run_piece, engine_release, info = piece_runner(folder, record, precision, threads)

    def release(name: str) -> None:
        if engine_release is not None:
            engine_release(name)
        trim_heap()

    net = SplitNet(record, run_piece, slab_z or DEFAULT_SLAB_Z, release)
    return LoadedModel(config, None, net.predict, record["source_weights"]["sha256"], str(folder), engine_info=info)
