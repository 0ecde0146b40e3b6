"""Energy and CO2 of a training run with carbontracker, in a separate watcher process.

carbontracker's monitor thread calls ``os._exit(70)`` on some errors, which no ``try`` can catch,
and it looks up the machine's location over the network. So it never runs inside the training
process: :class:`CarbonWatcher` starts ``python -m flare_seg.training.carbon`` which tracks until the
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

from flare_seg.atomic import write_text

log = logging.getLogger(__name__)

RAPL_PATH = Path("/sys/class/powercap/intel-rapl")


class CarbonWatcher:
    """Start/stop the watcher process; a failing watcher never affects training."""

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.process: subprocess.Popen | None = None
        self.stop_file = self.run_dir / ".carbon.stop"

    def start(self) -> CarbonWatcher:
        if not self.enabled:
            self._write_disabled()
            return self
        self.stop_file.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "flare_seg.training.carbon", "--pid", str(os.getpid()),
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
    write_text(path, json.dumps(payload, indent=2, default=_json_safe) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _summarise(log_dir: Path) -> dict:
    """All tracked sessions of a run (one carbontracker log each; a resumed run has several)."""
    from carbontracker import parser

    logs = parser.parse_all_logs(str(log_dir))
    text = "".join(p.read_text(errors="replace") for p in log_dir.glob("*carbontracker*.log"))
    sessions = [{"seconds": (log.get("actual") or {}).get("duration (s)"),
                 "energy_kwh": (log.get("actual") or {}).get("energy (kWh)"),
                 "co2eq_g": (log.get("actual") or {}).get("co2eq (g)"),
                 "components": log.get("components")} for log in logs]

    def total(key):
        values = [s[key] for s in sessions]
        return None if not values or any(v is None for v in values) else float(sum(values))

    return {
        "enabled": True,
        "seconds": total("seconds"),
        "energy_kwh": total("energy_kwh"),
        "co2eq_g": total("co2eq_g"),
        "energy_source": "rapl" if RAPL_PATH.exists() else "tdp_estimate",
        "carbon_intensity": ("global_average_default" if "Defaulting to global average" in text or "Unknown" in text
                             else "location_based"),
        "sessions": sessions,
        "note": ("carbontracker (PUE 1.58 included). Without RAPL counters the CPU power is carbontracker's "
                 "TDP-based estimate, not a measurement; offline the intensity is its global average. "
                 "Totals are null if any session's figure is unknown."),
    }


def summarise_run(run_dir: Path) -> dict:
    """Write ``carbon.json`` from every carbontracker log of the run (robust to a killed session)."""
    try:
        summary = _summarise(run_dir / "carbontracker")
    except Exception as err:  # noqa: BLE001 - carbontracker's log formats vary; record why
        summary = {"enabled": True, "energy_kwh": None, "co2eq_g": None, "note": f"could not parse logs: {err}"}
    _write_json(run_dir / "carbon.json", summary)
    return summary


def watch(pid: int, run_dir: Path, poll_s: float = 2.0) -> int:
    """Track energy until process ``pid`` exits or the stop file appears; write ``carbon.json``."""
    log_dir = run_dir / "carbontracker"
    log_dir.mkdir(parents=True, exist_ok=True)
    from carbontracker.tracker import CarbonTracker

    tracker = CarbonTracker(epochs=1, ignore_errors=True, log_dir=str(log_dir), verbose=0,
                            components="all", update_interval=10)
    tracker.epoch_start()
    stop_file = run_dir / ".carbon.stop"
    while _alive(pid) and not stop_file.exists():
        time.sleep(poll_s)
    tracker.epoch_end()
    tracker.stop()
    summarise_run(run_dir)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="carbontracker watcher for a flare-seg training run")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    return watch(args.pid, args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
