"""Crash safety with real processes: ``kill -9`` in a folder run and in training, two concurrent runs.

Each test starts ``python -m flare_seg.cli`` in a fresh process. Where the kill must land at one
exact moment (mid-write, mid-checkpoint-swap), a small launcher wraps ``os.replace`` in that process
so it stops (or SIGKILLs itself) right there; everything else is the unmodified program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_configs

from flare_seg import io
from flare_seg.atomic import is_temporary
from flare_seg.cli.main import main as cli
from flare_seg.geometry import Geometry

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SPACING = (6.0, 5.0, 5.0)

#: Runs the CLI; os.replace onto a file named HOLD writes MARKER and sleeps (to be killed there),
#: os.replace of a folder named KILL_DIR whose new state.json has step KILL_STEP SIGKILLs the process
#: between the two renames of the folder swap (the old folder moved aside, the new not yet in place),
#: and the first os.replace onto a file named TERM is followed by a SIGTERM to the process itself.
LAUNCHER = '''
import json, os, signal, sys, time
from pathlib import Path
hold, marker, kill_dir, kill_step, term = sys.argv[1:6]
real_replace = os.replace
sent = []
def replace(src, dst, *args, **kwargs):
    src, dst = Path(src), Path(dst)
    if hold and dst.name == hold:
        Path(marker).write_text(str(src))
        time.sleep(600)
    if kill_dir and dst.name == kill_dir and (src / "state.json").exists():
        if json.loads((src / "state.json").read_text())["step"] == int(kill_step) and not dst.exists():
            os.kill(os.getpid(), signal.SIGKILL)
    done = real_replace(src, dst, *args, **kwargs)
    if term and dst.name == term and not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
    return done
os.replace = replace
from flare_seg.cli.main import main
sys.exit(main(sys.argv[6:]))
'''


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def _launch(tmp_path: Path, cli_args: list[str], hold: str = "", kill_dir: str = "", kill_step: int = 0,
            term: str = ""):
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    marker = tmp_path / "marker.txt"
    command = [sys.executable, str(launcher), hold, str(marker), kill_dir, str(kill_step), term, *cli_args]
    return subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), marker


def _wait_for(path: Path, process: subprocess.Popen, timeout_seconds: float = 400.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"process ended ({process.returncode}) before {path}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.05)


def _write_cases(folder: Path, count: int) -> None:
    from flare_seg.synth import phantom

    folder.mkdir()
    for i in range(count):
        ct, _ = phantom.make_phantom(np.random.default_rng(i), shape_zyx=(32, 64, 64), spacing_mm=SPACING)
        io.write_image(ct, Geometry(ct.shape, SPACING), folder / f"case{i}_0000.nii.gz")


def _assert_valid_outputs(out: Path, cases: list[str]) -> None:
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{c}.nii.gz" for c in cases), names
    for case in cases:
        labels, geometry, _ = io.read_image(out / f"{case}.nii.gz")  # whole, readable, on the input grid
        assert geometry.shape == (32, 64, 64) and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}


def test_kill_9_mid_write_then_skip_existing_finishes_the_rest(tmp_path, tiny_model_dir):
    _write_cases(tmp_path / "in", 4)
    out = tmp_path / "out"
    args = ["predict", "-i", str(tmp_path / "in"), "-o", str(out), "-m", str(tiny_model_dir), "--no-progress",
            "--device", "cpu"]
    process, marker = _launch(tmp_path, args, hold="case2.nii.gz")
    _wait_for(marker, process)  # case2's label map is fully written to its temporary name, not yet renamed
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    left = sorted(p.name for p in out.iterdir())
    temporaries = [name for name in left if is_temporary(name)]
    assert len(temporaries) == 1 and temporaries[0].startswith(".case2.")  # the killed write, hidden
    _assert_valid_outputs_and_temporaries(out, ["case0", "case1"], temporaries)
    code = cli(args + ["--skip-existing", "--report", str(tmp_path / "r.json")])
    assert code == 0
    statuses = {r["case"]: r["status"] for r in json.loads((tmp_path / "r.json").read_text())["cases"]}
    assert statuses == {"case0": "skipped", "case1": "skipped", "case2": "ok", "case3": "ok"}
    _assert_valid_outputs(out, ["case0", "case1", "case2", "case3"])  # and the killed run's temporary is gone


def _assert_valid_outputs_and_temporaries(out: Path, cases: list[str], temporaries: list[str]) -> None:
    finals = [p for p in out.iterdir() if not is_temporary(p)]
    assert sorted(p.name for p in finals) == sorted(f"{c}.nii.gz" for c in cases)
    for path in finals:
        io.check_nifti_complete(path)
        assert io.read_image(path)[1].shape == (32, 64, 64)
    assert all(name.startswith(".") and ".partial" in name for name in temporaries)


def test_two_predict_processes_on_one_output_folder(tmp_path, tiny_model_dir):
    _write_cases(tmp_path / "in", 4)
    out = tmp_path / "out"
    processes = []
    for k in range(2):
        args = [sys.executable, "-m", "flare_seg.cli", "predict", "-i", str(tmp_path / "in"), "-o", str(out),
                "-m", str(tiny_model_dir), "--no-progress", "--device", "cpu", "--report", str(tmp_path / f"{k}.json")]
        processes.append(subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    results = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    for code, stderr in results:
        assert code == 0, stderr
    for k in range(2):
        records = json.loads((tmp_path / f"{k}.json").read_text())["cases"]
        assert [r["status"] for r in records] == ["ok"] * 4
    _assert_valid_outputs(out, [f"case{i}" for i in range(4)])


def _train_args(run: Path, config: Path) -> list[str]:
    return ["train", "--net", "seg", "--out", str(run), "--config", str(config), "--synthetic", "2",
            "--synthetic-shape", "24,48,48", "--synthetic-spacing", "8,8,8", "--val-synthetic", "1",
            "--steps", "6", "--checkpoint-every", "2", "--validate-every", "2", "--train-size", "32,32,32",
            "--no-carbon", "--no-progress", "--threads", "1"]


def _weights(path: Path, config) -> list[np.ndarray]:
    from flare_seg.models import build_model

    model = build_model(config)
    model.load_weights(path)
    return [w.numpy() for w in model.weights]


def _max_weight_diff(a: Path, b: Path, config) -> float:
    """Largest absolute difference between two weight files of ``config``'s network."""
    return max(float(np.abs(x - y).max()) for x, y in zip(_weights(a, config), _weights(b, config), strict=True))


def _run_cli_process(cli_args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "flare_seg.cli", *cli_args], env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("moment", ["mid_checkpoint_swap", "between_checkpoints"])
def test_kill_9_during_training_then_resume_gives_the_uninterrupted_weights(tmp_path, moment):
    from flare_seg.config import save_config

    _, seg = tiny_configs()
    config = tmp_path / "seg.json"
    save_config(seg, config)
    _run_cli_process(_train_args(tmp_path / "straight", config))
    run = tmp_path / "killed"
    if moment == "mid_checkpoint_swap":  # old checkpoint moved aside, the new one not yet in place
        process, _ = _launch(tmp_path, _train_args(run, config), kill_dir="checkpoint", kill_step=4)
        assert process.wait(timeout=900) == -signal.SIGKILL
        assert not (run / "checkpoint").exists() and (run / ".checkpoint.old" / "state.json").exists()
    else:
        process, _ = _launch(tmp_path, _train_args(run, config))
        _wait_for(run / "checkpoint" / "state.json", process)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    _run_cli_process(_train_args(run, config) + ["--resume"])
    assert _max_weight_diff(tmp_path / "straight" / "model.weights.h5", run / "model.weights.h5", seg) == 0.0
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 6
    assert not [p for p in run.iterdir() if is_temporary(p) or p.name == ".checkpoint.old"]


def test_sigterm_stops_training_with_a_checkpoint_and_resume_gives_the_uninterrupted_weights(tmp_path):
    """``kill <pid>`` mid-run: the step in progress finishes, a checkpoint is written at that step
    (here step 2, between the checkpoints every 4 steps; the signal lands when step 2's validation
    writes best.weights.h5), the process exits 143 saying how to continue, and ``--resume`` ends
    with the weights of a run never stopped."""
    from flare_seg.config import save_config

    _, seg = tiny_configs()
    config = tmp_path / "seg.json"
    save_config(seg, config)

    def args(run):  # checkpoints every 4 steps, validation every 2
        given = _train_args(run, config)
        given[given.index("--checkpoint-every") + 1] = "4"
        return given

    _run_cli_process(args(tmp_path / "straight"))
    run = tmp_path / "stopped"
    process, _ = _launch(tmp_path, args(run), term="best.weights.h5")
    out, err = process.communicate(timeout=900)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step 2 of 6" in out and "--resume" in out
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    rows = (run / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2"]
    _run_cli_process(args(run) + ["--resume"])
    assert _max_weight_diff(tmp_path / "straight" / "model.weights.h5", run / "model.weights.h5", seg) == 0.0
