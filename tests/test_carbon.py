"""carbon.json: sessions of a resumed run add up; unknown stays unknown; NumPy values serialise."""

import json

import numpy as np

from flare_seg.carbon import _write_json, merge_sessions


def test_sessions_merge_and_totals(tmp_path):
    path = tmp_path / "carbon.json"
    first = {"enabled": True, "seconds": 10.0, "energy_kwh": 0.5, "co2eq_g": 200.0,
             "components": {"cpu": {"avg_power_usages (W)": np.array([[60.0]])}}}
    _write_json(path, merge_sessions(path, first))
    saved = json.loads(path.read_text())
    assert saved["components"]["cpu"]["avg_power_usages (W)"] == [[60.0]]
    second = {"enabled": True, "seconds": 5.0, "energy_kwh": 0.25, "co2eq_g": 100.0}
    _write_json(path, merge_sessions(path, second))
    saved = json.loads(path.read_text())
    assert saved["energy_kwh"] == 0.75 and saved["co2eq_g"] == 300.0 and len(saved["sessions"]) == 2
    unknown = {"enabled": True, "seconds": 1.0, "energy_kwh": None, "co2eq_g": None}
    _write_json(path, merge_sessions(path, unknown))
    assert json.loads(path.read_text())["energy_kwh"] is None  # never a made-up total
