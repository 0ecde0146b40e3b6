"""The wheel holds every module of the source tree and the bundled weights, and each imports from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def source_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "flare_seg").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


@pytest.mark.slow
def test_wheel_installs_every_module_and_the_bundled_weights(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True, text=True)
    wheel = next(wheels.glob("flare_seg-*.whl"))
    members = set(zipfile.ZipFile(wheel).namelist())
    for module in source_modules():
        as_file = module.replace(".", "/")
        assert f"{as_file}.py" in members or f"{as_file}/__init__.py" in members, f"{module} is not in {wheel.name}"
    for net in ("loc", "seg"):
        for name in ("config.json", "model.weights.h5", "model.weights.h5.sha256"):
            assert f"flare_seg/bundled_weights/{net}/{name}" in members
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    script = ("import importlib, sys\n"
              f"for name in {source_modules()!r}:\n"
              "    module = importlib.import_module(name)\n"
              f"    assert module.__file__.startswith({str(target)!r}), (name, module.__file__)\n"
              "from flare_seg.predict import default_model_dir\n"
              "print(default_model_dir())\n")
    # run outside the checkout with only the installed copy on the path
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "KERAS_BACKEND": "tensorflow",
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith(str(target)), done.stdout
