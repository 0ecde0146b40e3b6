"""carbon.json: every session of a run is summed; unknown stays unknown; NumPy values serialise."""

import json

import numpy as np

from flare_seg.training import carbon


def test_sessions_are_summed_and_unknown_stays_unknown(tmp_path, monkeypatch):
    from carbontracker import parser

    logs = [{"actual": {"duration (s)": 10.0, "energy (kWh)": 0.5, "co2eq (g)": 200.0},
             "components": {"cpu": {"avg_power_usages (W)": np.array([[60.0]])}}},
            {"actual": {"duration (s)": 5.0, "energy (kWh)": 0.25, "co2eq (g)": 100.0}, "components": {}}]
    monkeypatch.setattr(parser, "parse_all_logs", lambda folder: logs)
    (tmp_path / "carbontracker").mkdir()
    summary = carbon.summarise_run(tmp_path)
    saved = json.loads((tmp_path / "carbon.json").read_text())
    assert saved["energy_kwh"] == 0.75 and saved["co2eq_g"] == 300.0 and saved["seconds"] == 15.0
    assert saved["sessions"][0]["components"]["cpu"]["avg_power_usages (W)"] == [[60.0]]
    assert saved["energy_source"] in ("rapl", "tdp_estimate") and summary["energy_kwh"] == 0.75
    logs.append({"actual": {"duration (s)": 1.0, "energy (kWh)": None, "co2eq (g)": None}})
    assert carbon.summarise_run(tmp_path)["energy_kwh"] is None  # never a made-up total


def test_disabled_tracking_writes_null(tmp_path):
    carbon.CarbonWatcher(tmp_path, enabled=False).start()
    saved = json.loads((tmp_path / "carbon.json").read_text())
    assert saved["enabled"] is False and saved["energy_kwh"] is None
