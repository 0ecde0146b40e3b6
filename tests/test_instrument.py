"""Instrumentation: FLARE's stable-max rule and area, timers, the sampler with fake GPU readings,
process-tree RSS of a real child, and the CPU-only fallback (no NVML) that this machine exercises."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from flare_seg import instrument
from flare_seg.instrument import (
    MIB,
    MemorySampler,
    NvmlProbe,
    StageTimer,
    memory_time_area,
    peak_rss_bytes,
    process_tree_rss_bytes,
    reset_peak_rss,
    stable_max,
    visible_gpu_index,
)


def test_stable_max_ignores_short_spikes():
    values = [1000] * 60 + [1500] * 38 + [9000] * 2  # exactly 2 % does not count (> 2 % is needed)
    assert stable_max(values) == 1500
    assert stable_max([1000] * 97 + [9000] * 3) == 9000  # 3 % is more than 2 %
    assert stable_max([1000] * 99 + [9000]) == 1000
    assert stable_max([1.4, 2.6, 3.1]) == 3  # every value qualifies with 3 samples: max, rounded
    assert stable_max(list(range(100))) == 99  # nothing repeats: the plain maximum
    assert stable_max([]) is None and stable_max([None, None]) is None
    assert stable_max([100.4] * 10 + [100.6] * 10) == 101  # rounded to whole MiB before counting
    assert stable_max([5] * 10 + [None] * 90) == 5  # None readings are not samples
    assert stable_max([1000] * 90 + [1200] * 10, min_fraction=0.2) == 1000


def test_memory_time_area():
    assert memory_time_area([100, 200, 300], 0.1) == pytest.approx(60.0)
    assert memory_time_area([100, None, 300], 0.5) == pytest.approx(200.0)
    assert memory_time_area([None], 0.1) is None


def test_stage_timer_accumulates_in_order():
    ticks = iter([0.0, 1.5, 2.0, 2.25, 10.0, 11.0])
    timer = StageTimer(clock=lambda: next(ticks))
    with timer.stage("read"):
        pass
    with timer.stage("predict"):
        pass
    with timer.stage("read"):
        pass
    assert timer.as_dict() == {"read": 2.5, "predict": 0.25}
    assert timer.total() == 2.75


def test_stage_timer_records_a_stage_that_raises():
    timer = StageTimer()
    with pytest.raises(KeyError), timer.stage("boom"):
        time.sleep(0.01)
        raise KeyError("x")
    assert timer.as_dict()["boom"] >= 0.01


class FakeProbe:
    """GPU probe with scripted readings (then the last reading forever)."""

    available = True

    def __init__(self, readings):
        self.readings = list(readings)
        self.closed = False

    def used_mib(self):
        return self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]

    def close(self):
        self.closed = True


def test_sampler_summary_from_fake_readings():
    probe = FakeProbe([500] + [800] * 60 + [650] * 38 + [4000])  # one spike in 100 samples
    sampler = MemorySampler(interval_s=0.1, probe=probe)
    for _ in range(100):
        sampler.sample_once()
    result = sampler.result(series=True)
    assert result["samples"] == 100
    assert result["gpu_used_mib"] == {"max": 4000, "stable_max": 800,
                                      "area_mib_s": pytest.approx(0.1 * (500 + 800 * 60 + 650 * 38 + 4000))}
    rss = result["rss_bytes"]
    assert rss["max"] > 10 * MIB and rss["stable_max"] % MIB == 0
    assert abs(rss["stable_max"] - rss["max"]) < 64 * MIB  # this process barely changes meanwhile
    assert result["series"]["gpu_used_mib"][:2] == [500, 800] and len(result["series"]["rss_mib"]) == 100
    assert "series" not in sampler.result()


def test_sampler_thread_samples_at_the_interval_and_leaves_given_probe_open():
    probe = FakeProbe([1234])
    with MemorySampler(interval_s=0.02, probe=probe) as sampler:
        time.sleep(0.3)
    result = sampler.result(series=True)
    assert result["samples"] >= 2, result["samples"]  # how many depends on the machine's load: no bound above
    assert result["gpu_used_mib"]["stable_max"] == 1234
    assert result["gpu_used_mib"]["area_mib_s"] == pytest.approx(1234 * 0.02 * result["samples"])
    times = result["series"]["t_s"]
    assert times == sorted(times) and len(times) == result["samples"]
    assert not probe.closed and result["error"] is None


def test_sampler_survives_a_failing_probe():
    class BrokenProbe(FakeProbe):
        def used_mib(self):
            raise RuntimeError("driver went away")

    with MemorySampler(interval_s=0.01, probe=BrokenProbe([0])) as sampler:
        time.sleep(0.05)
    result = sampler.result()
    assert result["samples"] >= 2 and result["gpu_used_mib"] is None
    assert "driver went away" in result["error"] and result["rss_bytes"]["max"] > 0


def test_process_tree_rss_counts_children():
    code = "import sys, time; block = bytearray(96 * 2**20); block[::4096] = b'x' * len(block[::4096]); " \
           "print('ready', flush=True); time.sleep(5)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        alone = process_tree_rss_bytes(include_children=False)
        with_children = process_tree_rss_bytes(include_children=True)
        assert with_children - alone > 90 * MIB
        assert process_tree_rss_bytes(pid=child.pid, include_children=False) > 90 * MIB
    finally:
        child.kill()
        child.wait()
    assert process_tree_rss_bytes(pid=child.pid) is None  # gone: None, no exception


def test_visible_gpu_index():
    assert visible_gpu_index(None) == 0
    assert visible_gpu_index("2,3") == 2 and visible_gpu_index(" 1 ") == 1
    assert visible_gpu_index("GPU-8f3c1b2a-0000") == 0
    assert visible_gpu_index("") is None and visible_gpu_index("-1") is None


def test_probe_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml now raises ImportError
    probe = NvmlProbe()
    assert not probe.available and "pynvml" in probe.reason
    assert probe.used_mib() is None
    probe.close()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not NvmlProbe().available


def test_cpu_only_fallback_reports_null_without_exceptions():
    probe = NvmlProbe()
    if probe.available:
        probe.close()
        pytest.skip(f"this machine has an NVIDIA GPU ({probe.name})")
    assert probe.used_mib() is None and probe.reason
    probe.close()
    with MemorySampler(interval_s=0.01) as sampler:
        time.sleep(0.05)
    result = sampler.result()
    assert result["gpu_used_mib"] is None and result["rss_bytes"]["max"] > 10 * MIB
    assert peak_rss_bytes() >= process_tree_rss_bytes(include_children=False) - MIB


def test_sampler_rejects_bad_interval_and_double_start():
    with pytest.raises(ValueError, match="interval_s"):
        MemorySampler(interval_s=0)
    sampler = MemorySampler(interval_s=0.01, probe=FakeProbe([1])).start()
    try:
        with pytest.raises(RuntimeError):
            sampler.start()
    finally:
        sampler.stop()
    assert instrument.to_mib(1.5 * MIB) == 2 and instrument.to_mib(MIB - 1) == 1


def test_peak_rss_can_be_reset_after_setup_work():
    block = np.ones(64 * MIB // 8)  # 64 MiB touched, then freed
    del block
    before = peak_rss_bytes()
    if not reset_peak_rss():
        pytest.skip("this kernel does not allow resetting the peak RSS")
    after = peak_rss_bytes()
    assert after <= before - 32 * MIB  # the freed block no longer counts
    assert after >= process_tree_rss_bytes(include_children=False) - MIB


def test_cpu_description_names_what_changes_the_figures(tmp_path, monkeypatch):
    """Model, family/model and the extensions an engine's speed depends on, from /proc/cpuinfo."""
    import os
    from pathlib import Path

    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    desc = instrument.cpu_description()
    assert desc.endswith(f"{len(os.sched_getaffinity(0))} cores")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    if flags:
        assert ("no AMX" in desc) == ("amx_bf16" not in flags)
        assert ("no BF16" in desc) == ("avx512_bf16" not in flags)
        assert ("AVX-512" in desc) == ("avx512f" in flags)
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Test CPU\ncpu family\t: 6\nmodel\t\t: 143\nflags\t\t: avx2 avx512f avx512_bf16 "
                    "amx_bf16\n\nmodel name\t: Test CPU\n")
    real_path = Path

    def fake_path(p, *a):
        return fake if str(p) == "/proc/cpuinfo" else real_path(p, *a)

    monkeypatch.setattr(instrument, "Path", fake_path)
    assert instrument.cpu_description().startswith("Test CPU (family 6 model 143), AVX2, AVX-512, BF16, AMX, ")
