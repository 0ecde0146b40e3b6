"""The lean CPU image (Dockerfile.cpu): hadolint-clean, base image as a build argument, no TensorFlow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_cpu_passes_hadolint():
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.skip("hadolint not installed (pip install '.[dev]')")
    proc = subprocess.run([tool, "--ignore", "DL3008", "--ignore", "DL3013", str(ROOT / "Dockerfile.cpu")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_cpu_is_lean_and_follows_the_flare_convention():
    text = (ROOT / "Dockerfile.cpu").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "FROM ${BASE_IMAGE}" in text
    assert "WORKDIR /workspace" in text and "predict.sh" in text and "--no-deps" in text
    requirements = (ROOT / "inference" / "requirements-cpu.txt").read_text().lower()
    packages = {line.split(">")[0].split("=")[0].strip() for line in requirements.splitlines()
                if line.strip() and not line.startswith("#")}
    assert "openvino" in packages and not packages & {"tensorflow", "keras", "jax", "torch"}
