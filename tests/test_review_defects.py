"""Regression tests of the review's defects (``../shared/REVIEW.md``): each fails on the code it mends."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from flare_seg import runtime
from flare_seg.naming import case_name
from flare_seg.training import augment, data


def test_cached_spline_basis_is_read_only():  # D3
    basis = augment._bspline_basis(20, 5)
    assert basis.dtype == np.float32 and not basis.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        basis[0, 0] = 1.0
    assert augment._bspline_basis(20, 5) is basis  # the very array every later caller gets


class _FakeJaxGpu:
    platform = "gpu"

    def __init__(self):
        self.peak = 0

    def memory_stats(self):
        return {"peak_bytes_in_use": self.peak}

    def __str__(self):
        return "gpu:0"


def test_jax_allocator_peak_respects_reset(monkeypatch):  # D5
    import jax

    gpu = _FakeJaxGpu()
    monkeypatch.setattr(runtime, "backend_name", lambda: "jax")
    monkeypatch.setattr(jax, "devices", lambda: [gpu])
    monkeypatch.setattr(runtime, "_jax_peak_at_reset", {})
    gpu.peak = 900
    assert runtime.allocator_peak_bytes(reset=True) == 900  # the first case's peak
    gpu.peak = 900  # second case stays below 900: its own peak is unknown, not the first case's 900
    assert runtime.allocator_peak_bytes() is None
    runtime.allocator_peak_bytes(reset=True)
    gpu.peak = 1500  # third case rises above: that is its peak
    assert runtime.allocator_peak_bytes() == 1500


def test_device_warnings_reach_the_report_provenance(tiny_model_dir, monkeypatch):  # D9
    from flare_seg.predict import Segmenter

    real = runtime.configure_device

    def gpu_asked_on_cpu(device, memory, threads):
        return real("gpu", memory, threads)  # no GPU here: a warning says it runs on the CPU

    monkeypatch.setattr(runtime, "configure_device", gpu_asked_on_cpu)
    provenance = Segmenter.load(tiny_model_dir).provenance()
    assert any("no GPU is usable" in w for w in provenance["warnings"]), provenance
    assert provenance["device"] == "cpu"


def test_json_dataset_case_ids_follow_the_inference_naming(tmp_path):  # D16
    images = ["liver.scan_0000.nii.gz", "b_0000.nrrd", "c.v2.mha"]
    entries = [{"image": name, "label": f"label_{i}.nii.gz"} for i, name in enumerate(images)]
    (tmp_path / "pairs.json").write_text(json.dumps(entries))
    pairs = data.find_pairs(tmp_path / "pairs.json")
    assert [case for case, _, _ in pairs] == [case_name(name) for name in images] == ["liver.scan", "b", "c.v2"]
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.nii.gz"}]))
    with pytest.raises(ValueError, match="bad.json: entry 0 is not"):
        data.find_pairs(tmp_path / "bad.json")


def test_sample_counters_are_exact_under_worker_threads():  # D15
    from flare_seg.training.loop import make_dataset

    class SlowSampler:
        def sample(self, index):
            time.sleep(0.0005)
            return np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2, 1), np.float32)

    dataset = make_dataset(SlowSampler(), ("prob",), 0, 400, workers=4)
    threads = [threading.Thread(target=lambda k=k: [dataset[i] for i in range(k, 400, 8)]) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dataset.samples == 400 and dataset.sample_seconds > 0


def test_mean_validation_dsc_of_zero_is_a_score_not_missing():  # D4, the scoring half
    from flare_seg.training.loop import mean_validation_dsc

    assert mean_validation_dsc({"step": 2, "val_dsc_liver": 0.0}) == 0.0
    assert mean_validation_dsc({"step": 2, "loss": 1.0}) is None


@pytest.mark.slow
def test_best_weights_follow_validations_that_are_not_checkpoint_steps(tmp_path):  # D4
    from test_train import blob_case, seg_setup

    from flare_seg.training import loop as training

    rng = np.random.default_rng(0)
    cases = [blob_case(i, rng) for i in range(3)]
    # validations at steps 2 and 4, checkpoints at 3 and 5: no step is both (the old code never wrote best)
    seg, train = seg_setup(steps=5, checkpoint_every=3, validate_every=2)
    training.train(seg, train, cases[:2], tmp_path / "run", val_cases=cases[2:], progress=False)
    rows = list(__import__("csv").DictReader(open(tmp_path / "run" / "train_log.csv")))
    scored = {int(r["step"]): training.mean_validation_dsc(r) for r in rows}
    scored = {step: score for step, score in scored.items() if score is not None}
    assert sorted(scored) == [2, 4]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["step"] == max(scored, key=lambda s: (scored[s], s)) and best["mean_val_dsc"] == max(scored.values())
    assert (tmp_path / "run" / "best.weights.h5").exists()


@pytest.mark.slow
def test_seed_state_count_mismatch_is_a_clear_error(tmp_path):  # D14
    from test_train import blob_case, seg_setup

    from flare_seg.models import build_model
    from flare_seg.training import loop as training

    seg, train = seg_setup(steps=2, checkpoint_every=2, validate_every=2)
    training.train(seg, train, [blob_case(0, np.random.default_rng(0))], tmp_path / "run", progress=False)
    model = training.compile_model(build_model(seg), seg, train)
    extra = len(training._seed_variables(model)) + 1
    np.savez(tmp_path / "run" / "checkpoint" / "seeds.npz", *[np.zeros(2, np.uint32)] * extra)
    with pytest.raises(ValueError, match=f"holds {extra} dropout seed states"):
        training.load_checkpoint(training.RunPaths(tmp_path / "run"), model)


def test_failed_weights_copy_leaves_no_stray_temporary(tmp_path, monkeypatch):  # D13
    from flare_seg import atomic

    (tmp_path / "model.weights.h5").write_bytes(b"x" * 100)

    def failing_copy(src, dst):
        with open(dst, "wb") as fh:
            fh.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.shutil, "copyfile", failing_copy)
    with pytest.raises(OSError, match="No space"):
        atomic.copy_file(tmp_path / "model.weights.h5", tmp_path / "best.weights.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.weights.h5"]


@pytest.mark.parametrize("module", ["evaluate", "benchmark_run"])
def test_evaluation_csv_writers_are_atomic(tmp_path, module):  # D19
    import importlib

    writer = importlib.import_module(f"flare_seg.evaluation.{module}")
    target = tmp_path / "scores.csv"
    target.write_text("previous complete table\n")
    good = dict.fromkeys(writer.CSV_COLUMNS, 1)
    with pytest.raises((AttributeError, KeyError)):
        writer.write_csv([good, object() if module == "evaluate" else {"case": "no other columns"}], target)
    assert target.read_text() == "previous complete table\n"  # not a half-written table
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
