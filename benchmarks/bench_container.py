#!/usr/bin/env python3
"""The built container images, run as the FLARE organisers run them: size, wall time per case, labels.

    python benchmarks/bench_container.py --image flareseg:cpu --image flareseg:latest --json bench_container.json

Needs a reachable Docker daemon and the images (``scripts/build_container.sh --all``). For each image:

- its size (``docker image inspect --format '{{.Size}}'``);
- the organisers' protocol: every case copied alone into ``inputs/`` and one whole
  ``docker container run --rm -v inputs:/workspace/inputs/ -v outputs:/workspace/outputs/ IMAGE
  /bin/bash -c "sh predict.sh"`` per case (``--network none`` added, ``--gpus`` left out: this
  measures the CPU path), timed from outside: container start, imports, model loading included;
- one run on a folder of three FLARE-named cases (``FLARETs_000N_0000.nii.gz``), checking that
  each gets its ``FLARETs_000N.nii.gz``;
- the share of voxels whose label equals a host run of ``flare-seg predict`` with the same engine
  (``--engine``, default openvino: what ``predict.sh`` picks without a GPU).

The cases: the bundled real CT (``examples/upper_abdomen_slab_0000.nii.gz``, 512x512x20) and three
phantoms of 512x512xN (``--phantom-z``, 0.8x0.8x2.5 mm). The CPU (model, family/model, AVX-512,
BF16, AMX; ``flare_seg.instrument.cpu_description``) and the number of cores go into the output
beside every figure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from flare_seg.instrument import cpu_description

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_CT = ROOT / "examples" / "upper_abdomen_slab_0000.nii.gz"


def docker_unavailable_reason() -> str | None:
    """None when a Docker daemon answers, else why not (for a skip or an error message)."""
    if shutil.which("docker") is None:
        return "no docker command on PATH"
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "docker info failed"
        return f"no Docker daemon reachable ({last})"
    return None


def image_size_bytes(image: str) -> int | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", image],
                          capture_output=True, text=True)
    return int(proc.stdout.strip()) if proc.returncode == 0 else None


def run_container(image: str, inputs: Path, outputs: Path, timeout_s: float = 1800) -> tuple[float, str]:
    """The organisers' command (no --gpus, no network); returns (wall seconds, combined output)."""
    outputs.mkdir(parents=True, exist_ok=True)
    cmd = ["docker", "container", "run", "--rm", "--network", "none",
           "-v", f"{inputs.resolve()}/:/workspace/inputs/", "-v", f"{outputs.resolve()}/:/workspace/outputs/",
           image, "/bin/bash", "-c", "sh predict.sh"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{image} exited {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")
    return seconds, proc.stdout + proc.stderr


def run_host(inputs: Path, outputs: Path, engine: str) -> None:
    """`flare-seg predict` on this machine, from this checkout, with the given engine and the
    precision of the container's entry point (predict.sh: ``--precision auto``)."""
    cmd = [sys.executable, "-m", "flare_seg.cli", "predict", "-q", "-i", str(inputs), "-o", str(outputs),
           "--engine", engine, "--device", "cpu", "--precision", "auto", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"host flare-seg predict failed: {proc.stderr[-2000:]}")


def compare_labels(container_out: Path, host_out: Path) -> dict:
    """Voxel agreement and header equality of one container output against the host's."""
    from flare_seg import io

    labels, geometry, _ = io.read_image(container_out)
    reference, reference_geometry, _ = io.read_image(host_out)
    if labels.shape != reference.shape:
        return {"agreement": 0.0, "same_geometry": False, "labels": sorted(np.unique(labels).tolist())}
    return {"agreement": float(np.mean(labels == reference)),
            "same_geometry": geometry == reference_geometry,
            "dtype": str(labels.dtype), "labels": sorted(np.unique(labels).tolist())}


def flare_name(i: int) -> str:
    return f"FLARETs_{i:04d}"


def make_cases(folder: Path, phantom_z: list[int], seed: int = 2024) -> dict[str, Path]:
    """{case name: input path}: the bundled CT and FLARE-named phantoms (written once, reused)."""
    from flare_seg import io
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom

    folder.mkdir(parents=True, exist_ok=True)
    cases = {"upper_abdomen_slab": folder / BUNDLED_CT.name}
    if not cases["upper_abdomen_slab"].exists():
        shutil.copyfile(BUNDLED_CT, cases["upper_abdomen_slab"])
    for i, n_z in enumerate(phantom_z, start=1):
        path = folder / f"{flare_name(i)}_0000.nii.gz"
        if not path.exists():
            ct, _ = phantom.make_phantom(np.random.default_rng([seed, i]), shape_zyx=(n_z, 512, 512),
                                         spacing_mm=(2.5, 0.8, 0.8))
            io.write_image(ct, Geometry(ct.shape, (2.5, 0.8, 0.8)), path)
        cases[flare_name(i)] = path
    return cases


def bench_image(image: str, cases: dict[str, Path], host_out: Path, work: Path) -> dict:
    result = {"image": image, "size_bytes": image_size_bytes(image), "cases": {}}
    for case, path in cases.items():  # the organisers' protocol: one case alone per container run
        inputs, outputs = work / case / "inputs", work / case / "outputs"
        inputs.mkdir(parents=True)
        shutil.copyfile(path, inputs / path.name)
        seconds, _ = run_container(image, inputs, outputs)
        written = sorted(p.name for p in outputs.iterdir())
        result["cases"][case] = {"wall_s": round(seconds, 2), "outputs": written,
                                 **compare_labels(outputs / f"{case}.nii.gz", host_out / f"{case}.nii.gz")}
    flare_cases = {c: p for c, p in cases.items() if c.startswith("FLARETs_")}
    inputs, outputs = work / "folder" / "inputs", work / "folder" / "outputs"
    inputs.mkdir(parents=True)
    for path in flare_cases.values():
        shutil.copyfile(path, inputs / path.name)
    seconds, _ = run_container(image, inputs, outputs)
    written = sorted(p.name for p in outputs.iterdir())
    result["folder"] = {"cases": len(flare_cases), "wall_s": round(seconds, 2), "outputs": written,
                        "names_ok": written == sorted(f"{c}.nii.gz" for c in flare_cases),
                        "min_agreement": min(compare_labels(outputs / f"{c}.nii.gz", host_out / f"{c}.nii.gz")
                                             ["agreement"] for c in flare_cases)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", action="append", help="image to run (repeatable; default flareseg:cpu)")
    parser.add_argument("--engine", default="openvino", help="the host run's engine (predict.sh's choice)")
    parser.add_argument("--phantom-z", type=int, nargs="+", default=[100, 150, 200])
    parser.add_argument("--cases-dir", type=Path, help="keep the generated inputs here (reused when present)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    reason = docker_unavailable_reason()
    if reason:
        print(f"bench_container: {reason}", file=sys.stderr)
        return 2
    images = args.image or ["flareseg:cpu"]
    missing = [image for image in images if image_size_bytes(image) is None]
    if missing:
        print(f"bench_container: image(s) not built: {', '.join(missing)} (scripts/build_container.sh --all)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_container_") as tmp:
        work = Path(tmp)
        cases = make_cases(args.cases_dir or work / "cases", args.phantom_z)
        host_in, host_out = work / "host_in", work / "host_out"
        host_in.mkdir()
        for path in cases.values():
            os.symlink(path.resolve(), host_in / path.name)
        run_host(host_in, host_out, args.engine)
        results = {"cpu_model": cpu_description(), "cpu_cores": os.cpu_count(), "engine": args.engine,
                   "date": time.strftime("%Y-%m-%d"), "phantom_z": args.phantom_z,
                   "images": [bench_image(image, cases, host_out, work / image.replace(":", "_").replace("/", "_"))
                              for image in images]}
    print(f"CPU: {results['cpu_model']} ({results['cpu_cores']} cores), host engine {args.engine}")
    for image in results["images"]:
        size_gb = image["size_bytes"] / 1e9
        print(f"{image['image']}: {size_gb:.2f} GB")
        for case, row in image["cases"].items():
            print(f"  {case:20s} {row['wall_s']:7.2f} s  agreement {row['agreement']:.5f}  outputs {row['outputs']}")
        folder = image["folder"]
        print(f"  folder of {folder['cases']}: {folder['wall_s']:.2f} s, names ok {folder['names_ok']}, "
              f"min agreement {folder['min_agreement']:.5f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
