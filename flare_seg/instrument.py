"""Measuring time and memory the way FLARE did: one sampler for inference reports and ``benchmark-run``.

FLARE's efficiency script (JunMa11/FLARE, ``FLARE21/Evaluation/Efficiency.py``) polled the device's
``total - free`` memory through NVML every 0.1 s while the team's container ran, and its
``load_json.py`` took as "maximum used GPU memory" the largest value occurring in more than 2 % of
the samples (so short spikes do not count), and ``sum(samples) * 0.1`` as the area under the
memory-time curve (MB*s). This module reproduces that, in MiB, and adds the process-tree resident
memory (RSS) from psutil, which FLARE did not measure but which matters on CPU-only machines.

Device-level memory counts everything on the GPU: the CUDA context, allocator pools and any other
process. Summed RSS of a process tree counts shared pages once per process, so it can overstate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

MIB = 2**20
#: FLARE's rule: a value must occur in more than this fraction of the samples to count as the maximum.
STABLE_FRACTION = 0.02


def to_mib(value_bytes: float) -> int:
    """Bytes to whole MiB (rounded to nearest), the resolution FLARE's memory rule counts in."""
    return int(round(value_bytes / MIB))


def stable_max(values: Iterable[float | None], min_fraction: float = STABLE_FRACTION) -> int | None:
    """FLARE's maximum memory: the largest whole-MiB value occurring in more than ``min_fraction``
    of the samples; the plain maximum when no value occurs that often; ``None`` without samples.

    Values are MiB; floats are rounded to whole MiB before counting (byte readings must be
    converted with :func:`to_mib` first), and ``None`` readings are ignored.
    """
    rounded = [int(round(v)) for v in values if v is not None]
    if not rounded:
        return None
    counts = Counter(rounded)
    frequent = [value for value, count in counts.items() if count > min_fraction * len(rounded)]
    return max(frequent) if frequent else max(rounded)


def memory_time_area(values_mib: Iterable[float | None], interval_s: float) -> float | None:
    """Area under the memory-time curve in MiB*s, FLARE's ``sum(samples) * interval`` (None readings
    skipped); ``None`` without any reading."""
    values = [v for v in values_mib if v is not None]
    return float(sum(values) * interval_s) if values else None


def visible_gpu_index(cuda_visible_devices: str | None) -> int | None:
    """NVML index of the first GPU a CUDA program would use, from ``CUDA_VISIBLE_DEVICES``.

    Unset: 0. A plain index list (``"2,3"``): its first index. Empty or negative: ``None`` (no GPU
    visible). Anything else (UUIDs, MIG names): 0. NVML numbers devices in PCI bus order, which is
    CUDA's order only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; on one-GPU machines they agree.
    """
    if cuda_visible_devices is None:
        return 0
    first = cuda_visible_devices.split(",")[0].strip()
    if not first:
        return None
    try:
        index = int(first)
    except ValueError:
        log.debug("CUDA_VISIBLE_DEVICES=%r is not an index list; measuring GPU 0", cuda_visible_devices)
        return 0
    return index if index >= 0 else None


class NvmlProbe:
    """Device-level used GPU memory (``total - free``, whole MiB) of one GPU through NVML.

    ``available`` is False, with the reason in ``reason``, when pynvml (package nvidia-ml-py), the
    NVML library or the driver is missing, or no GPU is visible; nothing raises then.
    """

    def __init__(self, index: int | None = None) -> None:
        self.available = False
        self.reason = ""
        self.name = ""
        self.total_mib: int | None = None
        self.index = visible_gpu_index(os.environ.get("CUDA_VISIBLE_DEVICES")) if index is None else index
        self._nvml = None
        self._handle = None
        if self.index is None:
            self.reason = "CUDA_VISIBLE_DEVICES hides every GPU"
            return
        try:
            import pynvml
        except ImportError as err:
            self.reason = f"pynvml not installed ({err})"
            return
        try:
            pynvml.nvmlInit()
        except (pynvml.NVMLError, OSError) as err:
            self.reason = f"NVML not usable ({err})"
            return
        self._nvml = pynvml
        self._open_device()

    def _open_device(self) -> None:
        try:
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.index)
            name = self._nvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else str(name)
            self.total_mib = to_mib(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total)
            self.available = True
        except self._nvml.NVMLError as err:
            self.reason = f"GPU {self.index} not readable through NVML ({err})"
            self.close()

    def used_mib(self) -> int | None:
        """Device-level used memory in whole MiB now, or ``None`` when not available."""
        if not self.available:
            return None
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError as err:
            log.debug("NVML memory reading failed: %s", err)
            return None
        return to_mib(info.total - info.free)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
        self._nvml = None
        self._handle = None
        self.available = False


class MemoryProbe(Protocol):
    """What :class:`MemorySampler` needs from a GPU probe (tests inject fakes)."""

    available: bool

    def used_mib(self) -> int | None: ...

    def close(self) -> None: ...


def process_tree_rss_bytes(pid: int | None = None, include_children: bool = True) -> int | None:
    """Resident memory of process ``pid`` (None: this one) plus, optionally, all its descendants.

    ``None`` when the process is gone. Descendants that exit while being read are skipped.
    """
    import psutil

    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        children = process.children(recursive=True) if include_children else []
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += child.memory_info().rss
    return int(total)


class MemorySampler:
    """Samples device GPU memory (NVML, MiB) and process-tree RSS (bytes) in a daemon thread.

    ``with MemorySampler(pid=child.pid) as sampler: ...`` then ``sampler.result()``. The first
    sample is taken at once, then one every ``interval_s`` (10 Hz by default, as FLARE). A probe
    passed in is used and left open; without one an :class:`NvmlProbe` is opened and closed here.
    Errors while sampling are logged and stored in ``error``; they never reach the caller.
    """

    def __init__(self, interval_s: float = 0.1, pid: int | None = None, include_children: bool = True,
                 probe: MemoryProbe | None = None) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.interval_s = float(interval_s)
        self.pid = pid
        self.include_children = include_children
        self.error: str | None = None
        self._probe = probe
        self._owns_probe = probe is None
        self._times_s: list[float] = []
        self._gpu_mib: list[int | None] = []
        self._rss_bytes: list[int | None] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.perf_counter()
        self._t1: float | None = None

    def start(self) -> MemorySampler:
        if self._thread is not None:
            raise RuntimeError("MemorySampler.start() called twice")
        if self._probe is None:
            self._probe = NvmlProbe()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="flare-seg-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (idempotent) and close the probe if this sampler opened it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self.interval_s))
        if self._t1 is None:
            self._t1 = time.perf_counter()
        if self._owns_probe and self._probe is not None:
            self._probe.close()

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self) -> None:
        next_s = time.perf_counter()
        try:
            while not self._stop.is_set():
                self.sample_once()
                next_s += self.interval_s
                self._stop.wait(max(0.0, next_s - time.perf_counter()))
        except Exception as err:  # noqa: BLE001 - the thread must never die with an exception
            self.error = f"{type(err).__name__}: {err}"
            log.warning("memory sampler stopped: %s", self.error)

    def sample_once(self) -> None:
        """Take one sample now (the thread calls this; tests may call it directly)."""
        gpu = rss = None
        try:
            if self._probe is not None and getattr(self._probe, "available", True):
                gpu = self._probe.used_mib()
        except Exception as err:  # noqa: BLE001 - a probe's failure must not stop the measurement
            self.error = f"GPU probe: {type(err).__name__}: {err}"
            log.debug("GPU probe failed: %s", err)
        try:
            rss = process_tree_rss_bytes(self.pid, self.include_children)
        except Exception as err:  # noqa: BLE001
            self.error = f"RSS: {type(err).__name__}: {err}"
            log.debug("RSS reading failed: %s", err)
        with self._lock:
            self._times_s.append(time.perf_counter() - self._t0)
            self._gpu_mib.append(gpu)
            self._rss_bytes.append(rss)

    def result(self, series: bool = False) -> dict:
        """JSON-ready summary (see the module docstring for the rules); ``series=True`` adds the
        sampled time series under ``"series"`` (``t_s``, ``gpu_used_mib``, ``rss_mib``) for plots."""
        with self._lock:
            times_s, gpu, rss = list(self._times_s), list(self._gpu_mib), list(self._rss_bytes)
        rss_mib = [None if v is None else to_mib(v) for v in rss]
        gpu_valid = [v for v in gpu if v is not None]
        rss_valid = [v for v in rss if v is not None]
        end = self._t1 if self._t1 is not None else time.perf_counter()
        out = {
            "interval_s": self.interval_s,
            "samples": len(times_s),
            "seconds": end - self._t0,
            "gpu_used_mib": None if not gpu_valid else {
                "max": max(gpu_valid), "stable_max": stable_max(gpu),
                "area_mib_s": memory_time_area(gpu, self.interval_s)},
            "rss_bytes": None if not rss_valid else {
                "max": max(rss_valid), "stable_max": stable_max(rss_mib) * MIB,
                "area_mib_s": memory_time_area(rss_mib, self.interval_s)},
            "error": self.error,
        }
        if series:
            out["series"] = {"t_s": [round(t, 4) for t in times_s], "gpu_used_mib": gpu if gpu_valid else None,
                             "rss_mib": rss_mib}
        return out


class StageTimer:
    """Wall time per named stage: ``with timer.stage("read"): ...``; repeated stages accumulate."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + (self._clock() - start)

    def as_dict(self) -> dict[str, float]:
        """``{stage: seconds}`` (rounded to 0.1 ms for reports) in the order the stages first ran."""
        return {name: round(seconds, 4) for name, seconds in self._seconds.items()}

    def total(self) -> float:
        return float(sum(self._seconds.values()))


def cpu_description() -> str:
    """The CPU as benchmark figures should name it: model, family/model, the vector extensions that
    change what an engine can do (AVX2, AVX-512, native BF16, AMX) and the cores this process may use."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    import platform

    name = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    flags = set(info.get("flags", "").split())
    ext = [label for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "BF16"),
                                     ("amx_bf16", "AMX")) if flag in flags]
    if flags:
        ext += [f"no {label}" for flag, label in (("avx512_bf16", "BF16"), ("amx_bf16", "AMX")) if flag not in flags]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return ", ".join([name, *ext, f"{cores} cores"])


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), in KiB, or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started or since :func:`reset_peak_rss`.

    Linux: ``VmHWM`` (which :func:`reset_peak_rss` can reset); elsewhere ``ru_maxrss``
    (KiB on Linux, bytes on macOS), which only grows."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0: ``clear_refs`` value 5).

    Lets a benchmark measure the peak of one step (e.g. one case) after setup work such as
    building the input. Returns False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
