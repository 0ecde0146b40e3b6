"""The built images, run with the organisers' command: FLARE names out, the host's labels inside.

Skipped where no Docker daemon is reachable or the image is not built (scripts/build_container.sh);
the static checks of the same files are test_container.py and test_container_cpu.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_container  # noqa: E402

CASES = ("FLARETs_0001", "FLARETs_0002")


@pytest.fixture(scope="module")
def flare_folder(tmp_path_factory) -> Path:
    """The bundled real CT (512x512x20) under two FLARE names."""
    inputs = tmp_path_factory.mktemp("flare") / "inputs"
    inputs.mkdir()
    for case in CASES:
        shutil.copyfile(bench_container.BUNDLED_CT, inputs / f"{case}_0000.nii.gz")
    return inputs


@pytest.fixture(scope="module")
def host_labels(flare_folder, tmp_path_factory) -> Path:
    """`flare-seg predict` on this machine with predict.sh's engine without a GPU (openvino)."""
    reason = bench_container.docker_unavailable_reason()
    if reason:
        pytest.skip(f"{reason}: the built images cannot be run here")
    outputs = tmp_path_factory.mktemp("host") / "outputs"
    bench_container.run_host(flare_folder, outputs, "openvino")
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize("image", ["flareseg:cpu", "flareseg:latest"])
def test_image_segments_a_flare_folder_like_the_host(image, flare_folder, host_labels, tmp_path):
    if bench_container.image_size_bytes(image) is None:
        pytest.skip(f"image {image} not built (scripts/build_container.sh --all)")
    outputs = tmp_path / "outputs"
    bench_container.run_container(image, flare_folder, outputs, timeout_s=900)
    assert sorted(p.name for p in outputs.iterdir()) == sorted(f"{case}.nii.gz" for case in CASES)
    for case in CASES:
        result = bench_container.compare_labels(outputs / f"{case}.nii.gz", host_labels / f"{case}.nii.gz")
        assert result["same_geometry"] and result["dtype"] == "uint8"
        assert result["agreement"] >= 0.999, result
        assert set(result["labels"]) <= {0, 1, 2, 3, 4}


@pytest.mark.slow
def test_cpu_image_has_the_weights_and_no_tensorflow():
    reason = bench_container.docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    if bench_container.image_size_bytes("flareseg:cpu") is None:
        pytest.skip("image flareseg:cpu not built (scripts/build_container.sh --cpu)")
    code = ("import importlib.resources as r, importlib.util as u; import openvino; "
            "w = r.files('flare_seg.bundled_weights'); "
            "print(u.find_spec('tensorflow') is None and u.find_spec('keras') is None "
            "and all((w / n / 'core.onnx').is_file() for n in ('loc', 'seg')))")
    proc = subprocess.run(["docker", "container", "run", "--rm", "--network", "none", "flareseg:cpu",
                           "python3", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stdout + proc.stderr


def test_docker_reason_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert bench_container.docker_unavailable_reason() == "no docker command on PATH"
