"""Measuring a run: stage timers, process RSS, device-level GPU memory with FLARE's rules.

One sampler serves the inference report and ``flare-seg benchmark-run``. GPU memory is what
the FLARE organisers measured: device-level ``total - free`` from NVML, in whole MiB, sampled every
0.1 s; "maximum used GPU memory" is the largest value among those seen in more than 2 % of the
samples (the plain maximum when none qualifies), and the memory-time area was logged too.
Every GPU probe falls back to ``None`` without NVML (CPU-only machines): no exception escapes.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

log = logging.getLogger(__name__)

MIB = 2**20


def stable_max(values, min_fraction: float = 0.02) -> float | None:
    """FLARE's "maximum when stable": max over values occurring in more than ``min_fraction`` of samples.

    Values are rounded to whole numbers first (MiB readings), or nothing would ever repeat.
    Returns the plain maximum when no value qualifies and ``None`` for no samples.
    """
    rounded = [int(round(v)) for v in values if v is not None]
    if not rounded:
        return None
    counts = Counter(rounded)
    frequent = [v for v, n in counts.items() if n > min_fraction * len(rounded)]
    return float(max(frequent) if frequent else max(rounded))


def memory_time_area(values_mib, interval_s: float) -> float | None:
    """Area under the memory-time curve in MiB x s (rectangle rule at the sampling interval)."""
    values = [v for v in values_mib if v is not None]
    return float(sum(values) * interval_s) if values else None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class StageTimer:
    """Wall seconds per named stage, in first-use order; a repeated stage accumulates."""

    def __init__(self):
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - t0

    def as_dict(self) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in self._seconds.items()}

    def total(self) -> float:
        return float(sum(self._seconds.values()))


class NvmlProbe:
    """Device-level used GPU memory (total - free, MiB) of the first visible GPU, or ``None``."""

    def __init__(self):
        self.available = False
        self._nvml = None
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self._visible_index())
            self.available = True
        except Exception as err:  # noqa: BLE001 - no NVML library, no driver, no GPU: all mean "none"
            log.debug("NVML unavailable: %s", err)

    @staticmethod
    def _visible_index() -> int:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        return int(visible) if visible.isdigit() else 0

    def used_mib(self) -> int | None:
        if not self.available:
            return None
        try:
            info = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            return int(round((info.total - info.free) / MIB))
        except Exception as err:  # noqa: BLE001
            log.debug("NVML read failed: %s", err)
            return None

    def close(self) -> None:
        if self.available:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                pass
            self.available = False


def process_tree_rss_bytes(pid: int | None = None, include_children: bool = True) -> int | None:
    """RSS of a process (and its children) in bytes, or ``None`` if it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        if include_children:
            for child in proc.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        return int(total)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


class MemorySampler:
    """Background sampling of device GPU memory (NVML) and process-tree RSS at ``interval_s``."""

    def __init__(self, interval_s: float = 0.1, pid: int | None = None, include_children: bool = True,
                 probe: NvmlProbe | None = None):
        self.interval_s = interval_s
        self.pid = pid
        self.include_children = include_children
        self.probe = probe
        self.times: list[float] = []
        self.gpu_mib: list[int | None] = []
        self.rss_bytes: list[int | None] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._owns_probe = probe is None

    def _sample(self) -> None:
        self.times.append(round(time.perf_counter() - self._t0, 3))
        self.gpu_mib.append(self.probe.used_mib())
        self.rss_bytes.append(process_tree_rss_bytes(self.pid, self.include_children))

    def _loop(self) -> None:
        try:
            while True:
                self._sample()
                if self._stop.wait(self.interval_s):
                    break
        except Exception as err:  # noqa: BLE001 - a sampler must never break the run it measures
            log.warning("memory sampler stopped: %s", err)

    def start(self) -> "MemorySampler":
        if self.probe is None:
            self.probe = NvmlProbe()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._owns_probe and self.probe is not None:
            self.probe.close()

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def result(self, series: bool = False) -> dict:
        """JSON-ready summary; ``series=True`` adds the sampled time series (for plots)."""
        gpu = [v for v in self.gpu_mib if v is not None]
        rss_mib = [v / MIB for v in self.rss_bytes if v is not None]
        out = {
            "interval_s": self.interval_s,
            "samples": len(self.times),
            "gpu_used_mib": None if not gpu else {
                "max": float(max(gpu)), "stable_max": stable_max(gpu),
                "area_mib_s": memory_time_area(gpu, self.interval_s)},
            "rss_bytes": None if not rss_mib else {
                "max": int(max(v for v in self.rss_bytes if v is not None)),
                "stable_max": int(stable_max(rss_mib) * MIB)},
        }
        if series:
            out["series"] = {"t_s": self.times, "gpu_used_mib": self.gpu_mib,
                             "rss_mib": [None if v is None else round(v / MIB, 1) for v in self.rss_bytes]}
        return out
