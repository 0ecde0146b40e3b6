"""The FLARE container pieces: predict.sh (POSIX sh, shellcheck), Dockerfile (hadolint), the wheel's weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flare_seg import io
from flare_seg.geometry import Geometry

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} not installed (pip install '.[dev]')")
    return path


def test_predict_sh_passes_shellcheck_as_posix_sh():
    proc = subprocess.run([_tool("shellcheck"), "--shell=sh", str(ROOT / "inference" / "predict.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_tool("hadolint"), "--ignore", "DL3008", "--ignore", "DL3013",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_follows_the_flare_convention():
    text = (ROOT / "Dockerfile").read_text()
    assert "WORKDIR /workspace" in text and "predict.sh" in text
    assert "CUDA_VISIBLE_DEVICES" not in text
    script = (ROOT / "inference" / "predict.sh").read_text().splitlines()
    commands = [ln for ln in script if ln.strip() and not ln.lstrip().startswith("#")]  # comments may name it
    assert commands and not [ln for ln in commands if "CUDA_VISIBLE_DEVICES" in ln]


@pytest.mark.slow
def test_predict_sh_runs_with_folders_as_arguments(tmp_path, tiny_model_dir):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    array = np.full((16, 32, 32), -1000, np.int16)
    array[4:12, 8:24, 8:24] = 60
    io.write_image(array, Geometry(array.shape, (6.0, 6.0, 6.0)), inputs / "FLARE_007_0000.nii.gz")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run(["sh", str(ROOT / "inference" / "predict.sh"), str(inputs), str(outputs),
                           "-m", str(tiny_model_dir), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels, geometry, _ = io.read_image(outputs / "FLARE_007.nii.gz")
    assert geometry.shape == (16, 32, 32) and labels.dtype == np.uint8


@pytest.mark.slow
def test_built_wheel_contains_the_bundled_weights(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("flare_seg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for net in ("loc", "seg"):
        for name in ("config.json", "model.weights.h5", "model.weights.h5.sha256"):
            assert f"flare_seg/bundled_weights/{net}/{name}" in names
    assert "flare_seg/bundled_weights/MODEL_CARD.md" in names
    assert "flare_seg/data/amos_0013_labels.npz" in names
    assert not any(n.startswith(("tests/", "examples/")) for n in names)
