"""bench_nnunet's process handling: a run's spawned workers never outlive it (they would compute on
into the next tool's timing, as a stray nnU-Net worker once did)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
bench_nnunet = pytest.importorskip("bench_nnunet")

# A parent that starts a worker which would sleep for a minute, writes its pid, and then waits.
PARENT = ("import subprocess, sys, time\n"
          "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
          "open(sys.argv[1], 'w').write(str(w.pid))\n"
          "time.sleep(float(sys.argv[2]))\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())  # a zombie has finished


def _worker(pid_file: Path) -> int:
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            return int(pid_file.read_text())
        time.sleep(0.05)
    raise AssertionError("the worker never started")


@pytest.mark.parametrize("parent_sleep, timeout, killed", [(60.0, 1.5, True), (0.5, None, False)])
def test_run_tree_leaves_no_worker_behind(tmp_path, parent_sleep, timeout, killed):
    pid_file = tmp_path / "worker.pid"
    t0 = time.perf_counter()
    row = bench_nnunet.run_tree([sys.executable, "-c", PARENT, str(pid_file), str(parent_sleep)], dict(os.environ),
                                tmp_path / "log.txt", 0.1, timeout)
    assert time.perf_counter() - t0 < 20
    assert ("error" in row) == killed  # a killed run is an error, a finished one is not
    assert row["max_processes"] >= 2  # the sampler saw the worker in the tree
    worker = _worker(pid_file)
    for _ in range(40):  # SIGKILL is asynchronous; init reaps the orphan
        if not _alive(worker):
            break
        time.sleep(0.05)
    assert not _alive(worker)
