"""Energy and CO2 of a training run with carbontracker, in a separate watcher process.

carbontracker's monitor thread calls ``os._exit(70)`` on some errors, which no ``try`` can catch,
and it looks up the machine's location over the network. So it never runs inside the training
process: :class:`CarbonWatcher` starts ``python -m flare_seg.carbon`` which tracks until the
training process ends or asks it to stop, then writes ``carbon.json``. Offline, the carbon
intensity falls back to carbontracker's global average (labelled as such). On CPUs without RAPL
power counters (this project's CI machines) carbontracker estimates power from the CPU's TDP:
``carbon.json`` then says ``"energy_source": "tdp_estimate"``, never presenting it as measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

RAPL_PATH = Path("/sys/class/powercap/intel-rapl")


class CarbonWatcher:
    """Start/stop the watcher process; a failing watcher never affects training."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.process: subprocess.Popen | None = None
        self.stop_file = self.run_dir / ".carbon.stop"

    def start(self) -> "CarbonWatcher":
        if not self.enabled:
            self._write_disabled()
            return self
        self.stop_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "flare_seg.carbon", "--pid", str(os.getpid()),
               "--run-dir", str(self.run_dir)]
        try:
            self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        except OSError as err:
            log.warning("carbon tracking not started: %s", err)
        return self

    def stop(self, timeout_s: float = 60.0) -> dict | None:
        """Ask the watcher to finish and wait for ``carbon.json``; returns its content or None."""
        if self.process is None:
            return None
        self.stop_file.touch()
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            log.warning("carbon watcher did not finish in %.0f s; killed", timeout_s)
        self.stop_file.unlink(missing_ok=True)
        path = self.run_dir / "carbon.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _write_disabled(self) -> None:
        _write_json(self.run_dir / "carbon.json", {"enabled": False, "energy_kwh": None, "co2eq_g": None,
                                                   "note": "carbon tracking turned off (--no-carbon)"})

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _json_safe(value):
    """carbontracker's parsed logs hold NumPy arrays: lists for JSON."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_safe) + "\n")
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _summarise(log_dir: Path, seconds: float) -> dict:
    from carbontracker import parser

    logs = parser.parse_all_logs(str(log_dir))
    actual = (logs[-1].get("actual") or {}) if logs else {}
    text = "".join(p.read_text(errors="replace") for p in log_dir.glob("*carbontracker*.log"))
    intensity_default = "Defaulting to global average" in text or "Unknown" in text
    return {
        "enabled": True,
        "seconds": round(seconds, 1),
        "energy_kwh": actual.get("energy (kWh)"),
        "co2eq_g": actual.get("co2eq (g)"),
        "energy_source": "rapl" if RAPL_PATH.exists() else "tdp_estimate",
        "carbon_intensity": "global_average_default" if intensity_default else "location_based",
        "components": logs[-1].get("components") if logs else None,
        "note": ("carbontracker (PUE 1.58 included). Without RAPL counters the CPU power is carbontracker's "
                 "TDP-based estimate, not a measurement; offline the intensity is its global average."),
    }


def summarise_run(run_dir: Path, seconds: float) -> dict:
    """Write ``carbon.json`` from the carbontracker logs of one tracked session in ``run_dir``."""
    try:
        session = _summarise(run_dir / "carbontracker", seconds)
    except Exception as err:  # noqa: BLE001 - carbontracker's log formats vary; record why
        session = {"enabled": True, "energy_kwh": None, "co2eq_g": None, "note": f"could not parse logs: {err}"}
    merged = merge_sessions(run_dir / "carbon.json", session)
    _write_json(run_dir / "carbon.json", merged)
    return merged


def watch(pid: int, run_dir: Path, poll_s: float = 2.0) -> int:
    """Track energy until process ``pid`` exits or the stop file appears; write ``carbon.json``."""
    log_dir = run_dir / "carbontracker"
    log_dir.mkdir(parents=True, exist_ok=True)
    from carbontracker.tracker import CarbonTracker

    tracker = CarbonTracker(epochs=1, ignore_errors=True, log_dir=str(log_dir), verbose=0,
                            components="all", update_interval=10)
    t0 = time.time()
    tracker.epoch_start()
    stop_file = run_dir / ".carbon.stop"
    while _alive(pid) and not stop_file.exists():
        time.sleep(poll_s)
    tracker.epoch_end()
    tracker.stop()
    summarise_run(run_dir, time.time() - t0)
    return 0


def merge_sessions(path: Path, session: dict) -> dict:
    """Add one tracked session to a run's ``carbon.json`` (a resumed run has several); totals are
    ``None`` as soon as one session's figure is unknown."""
    previous = json.loads(path.read_text()) if path.exists() else {}
    session = json.loads(json.dumps(session, default=_json_safe))
    sessions = [s for s in previous.get("sessions", []) if s.get("enabled", True)] + [session]
    def total(key):
        values = [s.get(key) for s in sessions]
        return None if any(v is None for v in values) else float(sum(values))
    return {**session, "energy_kwh": total("energy_kwh"), "co2eq_g": total("co2eq_g"),
            "seconds": total("seconds"), "sessions": sessions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="carbontracker watcher for a flare-seg training run")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    return watch(args.pid, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
