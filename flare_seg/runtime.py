"""Backend-specific set-up at the edges: devices, GPU memory, threads, compiled prediction.

Everything that must know whether Keras runs on TensorFlow, JAX or PyTorch lives here (the
models, losses and training loop use ``keras.ops`` only). GPU code paths are exercised on a GPU
machine only; on a CPU-only machine every function here falls back cleanly, and tests check the
fallbacks.

GPU memory modes (``memory``):

* ``"growth"`` (default): allocate as needed instead of reserving the whole card
  (TensorFlow ``set_memory_growth``; JAX ``XLA_PYTHON_CLIENT_PREALLOCATE=false``; PyTorch's caching
  allocator grows by default).
* ``"async"``: TensorFlow's ``cuda_malloc_async`` allocator (``TF_GPU_ALLOCATOR``), which returns
  memory to the driver; JAX ``XLA_PYTHON_CLIENT_ALLOCATOR=platform``.
* an integer: a hard limit in MB (TensorFlow logical device ``memory_limit``; JAX
  ``XLA_PYTHON_CLIENT_MEM_FRACTION``; PyTorch ``set_per_process_memory_fraction``).

None of the GPU paths here has been exercised on a GPU by this project's tests: they run on CPU-only
machines, where each function's CPU fallback is what is tested. Treat the GPU branches as unverified
until ``docs/benchmarks.md`` records a GPU run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


def backend_name() -> str:
    """The Keras backend that is (or will be) used, without importing Keras' heavy parts twice."""
    import keras

    return keras.backend.backend()


@dataclass
class DeviceInfo:
    backend: str
    device: str  # "cpu" or "gpu"
    name: str
    memory_mode: str | None = None
    warnings: list | None = None

    def to_dict(self) -> dict:
        return {"keras_backend": self.backend, "device": self.device, "device_name": self.name,
                "gpu_memory_mode": self.memory_mode}


def prefer_onednn() -> None:
    """TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs. On an AMD EPYC
    (Zen 3, AVX2) they made a 96^3 SCN training step 3.6x faster (37 s -> 10.4 s) and its forward
    pass 2x faster (4.4 s -> 2.2 s); TF_ENABLE_ONEDNN_OPTS=0 in the environment still wins."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def set_environment_before_import(device: str, memory) -> None:
    """Environment variables that must be set before TensorFlow/JAX start (no effect afterwards)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    prefer_onednn()
    if device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        return
    if memory == "async":
        os.environ.setdefault("TF_GPU_ALLOCATOR", "cuda_malloc_async")
        os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def _configure_tensorflow(device: str, memory, threads: int | None) -> tuple[str, str]:
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu" or not gpus:
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        return "cpu", "cpu"
    gpu = gpus[0]
    if isinstance(memory, int):
        tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=memory)])
    elif memory in ("growth", None):
        tf.config.experimental.set_memory_growth(gpu, True)
    return "gpu", gpu.name


def _configure_jax(device: str, memory) -> tuple[str, str]:
    import jax

    devices = [d for d in jax.devices() if d.platform == "gpu"] if device != "cpu" else []
    if not devices:
        return "cpu", "cpu"
    return "gpu", str(devices[0].device_kind)


def _configure_torch(device: str, memory, threads: int | None) -> tuple[str, str]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if device == "cpu" or not torch.cuda.is_available():
        return "cpu", "cpu"
    if isinstance(memory, int):
        total_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory / total_mb))
    return "gpu", torch.cuda.get_device_name(0)


def configure_device(device: str = "auto", memory="growth", threads: int | None = None) -> DeviceInfo:
    """Choose CPU or GPU and the GPU memory mode; falls back to the CPU when no GPU is usable.

    ``device``: ``"auto"`` (GPU if present), ``"gpu"`` (warn and use the CPU if none) or ``"cpu"``.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu or gpu, got {device!r}")
    if not (memory in (None, "growth", "async") or (isinstance(memory, int) and memory > 0)):
        raise ValueError(f"GPU memory mode must be 'growth', 'async' or a positive MB limit, got {memory!r}")
    set_environment_before_import(device, memory)
    backend = backend_name()
    warnings = []
    try:
        if backend == "tensorflow":
            kind, name = _configure_tensorflow(device, memory, threads)
        elif backend == "jax":
            kind, name = _configure_jax(device, memory)
        else:
            kind, name = _configure_torch(device, memory, threads)
    except (RuntimeError, ValueError) as err:  # e.g. TensorFlow already initialised its devices
        warnings.append(f"device set-up failed ({err}); using the backend's defaults")
        log.warning(warnings[-1])
        kind, name = "cpu", "cpu"
    if device == "gpu" and kind == "cpu":
        warnings.append("--device gpu asked for, but no GPU is usable: running on the CPU")
        log.warning(warnings[-1])
    return DeviceInfo(backend, kind, name, memory if kind == "gpu" else None, warnings)


def configure_training(threads: int | None = None, deterministic: bool = True) -> None:
    """Threads and deterministic kernels for training (resume gives the same weights)."""
    prefer_onednn()  # before Keras imports TensorFlow; GPU memory settings are configure_device's
    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        if deterministic:
            tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)


def replica_share():
    """``(replicas, index)``: how many replicas share the global batch in this call, and which one
    this is (a tensor under ``tf.distribute``). ``(1, 0)`` outside a multi-replica ``tf.distribute``
    step and on every other backend: a JAX data-parallel step computes on the global batch."""
    if backend_name() != "tensorflow":
        return 1, 0
    import tensorflow as tf

    context = tf.distribute.get_replica_context()  # None in a cross-replica context
    if context is None or context.num_replicas_in_sync == 1:
        return 1, 0
    return context.num_replicas_in_sync, context.replica_id_in_sync_group


def compiled_predictor(model):
    """``f(x) -> dict of NumPy arrays``, compiled once per input shape (traced per valid size)."""
    import numpy as np
    from keras import ops

    backend = backend_name()
    if backend == "tensorflow":
        import tensorflow as tf

        # One graph per input shape, traced once through get_concrete_function: calling concrete
        # functions bypasses tf.function's retracing detector, whose "5 out of the last 5 calls
        # triggered tf.function retracing" warning a folder of differently sized CTs used to print.
        graph = tf.function(lambda t: model(t, training=False))
        traced = {}

        def fn(x):
            key = (tuple(x.shape), x.dtype)
            if key not in traced:
                traced[key] = graph.get_concrete_function(tf.TensorSpec(x.shape, x.dtype))
            return traced[key](x)
    elif backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def _jax_fn(tv, ntv, x):
            out, _ = model.stateless_call(tv, ntv, x, training=False)
            return out

        def fn(x):
            return _jax_fn(trainable, non_trainable, x)
    else:
        import torch

        def fn(x):
            with torch.no_grad():
                return model(x, training=False)

    def predict(x):
        out = fn(ops.convert_to_tensor(x))
        return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in out.items()}

    return predict


def allocator_peak_bytes(reset: bool = False) -> int | None:
    """Peak bytes of the framework's GPU allocator since the last reset, or None on the CPU."""
    backend = backend_name()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            if not tf.config.list_logical_devices("GPU"):
                return None
            peak = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
            if reset:
                tf.config.experimental.reset_memory_stats("GPU:0")
            return peak
        if backend == "torch":
            import torch

            if not torch.cuda.is_available():
                return None
            peak = int(torch.cuda.max_memory_allocated())
            if reset:
                torch.cuda.reset_peak_memory_stats()
            return peak
        return _jax_peak_bytes(reset)
    except (RuntimeError, ValueError, KeyError, ImportError) as err:
        log.debug("allocator peak unavailable: %s", err)
        return None


#: JAX's allocator keeps one process-wide peak and cannot reset it: the value it had at our last
#: "reset". A peak since then is known only when the allocator's peak rose above it.
_jax_peak_at_reset: dict[str, int] = {}


def _jax_peak_bytes(reset: bool) -> int | None:
    """The JAX GPU allocator's peak since the last ``reset`` (None when unknown or on the CPU)."""
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    stats = gpus[0].memory_stats() if gpus else None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    peak = int(stats["peak_bytes_in_use"])
    key = str(gpus[0])
    baseline = _jax_peak_at_reset.get(key)
    if reset:
        _jax_peak_at_reset[key] = peak
    if baseline is None or peak > baseline:
        return peak
    return None  # the process-wide peak predates the reset: this interval's own peak is not known
