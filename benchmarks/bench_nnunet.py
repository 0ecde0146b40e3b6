#!/usr/bin/env python3
"""flare-seg vs nnU-Net v2 on the same CT: wall time and peak RSS of each fresh process tree, as ratios.

    python benchmarks/bench_nnunet.py --nnunet-python /path/to/nnunet-venv/bin/python \
        --sizes 134 --repeats 1 --json bench_nnunet.json

The recipe (issue 11): nnU-Net v2 with the plans its planner makes for a FLARE21-like dataset
(3d_fullres, 0.8x0.8x2.5 mm, PlainConvUNet of 6 stages, 32..320 features, ~31 M parameters),
randomly initialised weights (seeded), one fold, no test-time augmentation, CPU PyTorch. Weights do
not change the cost of a sliding-window prediction, so no training is needed; the labels it writes
are noise and are only checked for shape.

The model folder (``nnUNet_results/Dataset021_FLARE21/nnUNetTrainer__nnUNetPlans__3d_fullres`` with
dataset.json, plans.json and fold_0/checkpoint_final.pth) is made once under ``--cache`` (outside
the repository) by ``--nnunet-python``, the interpreter of an environment with nnunetv2 and torch;
this script itself needs neither (flare-seg's own environment runs it).

Each tool runs as a fresh process on a folder holding the case (a 512x512xN flare-seg phantom at
0.8x0.8x2.5 mm per ``--sizes``, or the CT given with ``--case``), timed from outside (start,
imports, model loading, reading and writing included). Peak RSS is that of the whole process tree:
/proc is sampled every ``--interval`` s and the RSS (and PSS, which counts shared pages once) of
the root and all its descendants summed; nnU-Net's preprocessing and export workers are part of
it (``-npp 1 -nps 1``). ``max_vmhwm_mb`` is the largest single process's own high-water mark, a
lower bound that catches spikes between samples. Both tools get the same thread count (``--threads``,
default: the CPUs this process may use): flare-seg through ``--threads``, nnU-Net by making the
``multiprocessing.cpu_count()`` it hands to ``torch.set_num_threads`` return it. Ratios are
nnU-Net / flare-seg of the medians over ``--repeats``.
"""
import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_engines import make_case  # the same 512x512xN phantom (seed 2024) as the engine benchmark

from flare_seg.instrument import cpu_description

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 21
DATASET = "Dataset021_FLARE21"
MODEL_SUBDIR = Path("nnUNet_results") / DATASET / "nnUNetTrainer__nnUNetPlans__3d_fullres"
TARGET_SPEEDUP, TARGET_MEMORY_RATIO = 300.0, 4.0

FLARE_CHILD = "import sys\nfrom flare_seg.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
# nnUNetv2_predict, except that multiprocessing.cpu_count() (which -device cpu passes to
# torch.set_num_threads) returns the requested thread count.
NNUNET_CHILD = ("import multiprocessing, sys\nn = int(sys.argv.pop(1))\nmultiprocessing.cpu_count = lambda: n\n"
                "from nnunetv2.inference.predict_from_raw_data import predict_entry_point\n"
                "sys.argv[0] = 'nnUNetv2_predict'\npredict_entry_point()\n")


def dataset_json() -> dict:
    return {"channel_names": {"0": "CT"},
            "labels": {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "pancreas": 4},
            "numTraining": 361, "file_ending": ".nii.gz", "name": "FLARE21 (benchmark stand-in, random weights)"}


def plans_json() -> dict:
    """nnU-Net v2's default plans (ExperimentPlanner, 8 GB target) for a FLARE21-like fingerprint.

    Produced by the planner's ``get_plans_for_configuration`` (nnunetv2 2.8.1) for a median
    spacing of 2.5x0.8x0.8 mm and a median shape of 100x512x512 (FLARE21: abdominal CT, 512x512
    slices; any median between 90 and 107 slices gives the same plan): patch 40x224x224, six
    stages, 30.7 M parameters with 5 output classes. Written out here so that the benchmark does
    not depend on planner internals of the installed version.
    """
    resample = "resample_data_or_seg_to_shape"
    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [40, 224, 224], "median_image_size_in_voxels": [100, 512, 512], "spacing": [2.5, 0.8, 0.8],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": resample,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": resample,
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": resample,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
                "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [2.5, 0.8, 0.8],
        "original_median_shape_after_transp": [100, 512, 512],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": fullres}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        # Foreground (organ) HU statistics as CTNormalization uses them: clip to the 0.5/99.5
        # percentiles, then z-score with the mean and std (contrast-enhanced abdominal organs).
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3071.0, "mean": 99.4, "median": 104.0, "min": -1024.0,
            "percentile_00_5": -58.0, "percentile_99_5": 247.0, "std": 58.5}},
    }


def build_checkpoint(folder: Path, seed: int) -> None:
    """Runs under --nnunet-python: the randomly initialised network as nnU-Net's checkpoint_final.pth."""
    import importlib.metadata

    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((folder / "plans.json").read_text())
    dataset = json.loads((folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(seed)  # nnU-Net's He initialisation draws from the global generator
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import,
                                 determine_num_input_channels(manager, config, dataset),
                                 manager.get_label_manager(dataset).num_segmentation_heads,
                                 allow_init=True, deep_supervision=False)
    checkpoint = {"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                  "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset,
                                "device": "cpu"},
                  "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0, "_best_ema": None,
                  "optimizer_state": None, "grad_scaler_state": None, "logging": {}}
    target = folder / "fold_0" / "checkpoint_final.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target.with_suffix(".tmp"))
    os.replace(target.with_suffix(".tmp"), target)
    print(json.dumps({"parameters": sum(p.numel() for p in net.parameters()), "seed": seed,
                      "nnunetv2": importlib.metadata.version("nnunetv2"), "torch": torch.__version__}))


def ensure_model(cache: Path, nnunet_python: str, seed: int) -> dict:
    """The nnU-Net results folder under ``cache``, made (or remade, if the recipe changed) on demand."""
    folder = cache / MODEL_SUBDIR
    texts = {"dataset.json": json.dumps(dataset_json(), indent=2), "plans.json": json.dumps(plans_json(), indent=2)}
    stamp = hashlib.sha256((texts["dataset.json"] + texts["plans.json"] + str(seed)).encode()).hexdigest()
    info_path = folder / "bench_model.json"
    if info_path.exists() and (folder / "fold_0" / "checkpoint_final.pth").exists():
        info = json.loads(info_path.read_text())
        if info.get("stamp") == stamp:
            return info
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text + "\n")
    proc = subprocess.run([nnunet_exe(nnunet_python), str(Path(__file__).resolve()), "--build-checkpoint",
                           str(folder), "--seed", str(seed)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"building the nnU-Net checkpoint failed:\n{proc.stderr[-3000:]}")
    info = {**json.loads(proc.stdout.strip().splitlines()[-1]), "stamp": stamp, "folder": str(folder)}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def nnunet_exe(nnunet_python: str | None) -> str:
    if nnunet_python:
        return nnunet_python
    if os.environ.get("NNUNET_PYTHON"):
        return os.environ["NNUNET_PYTHON"]
    import shutil

    predict = shutil.which("nnUNetv2_predict")
    if predict and (Path(predict).parent / "python").exists():
        return str(Path(predict).parent / "python")
    sys.exit("no nnU-Net environment: give --nnunet-python (an interpreter with nnunetv2 and torch) or $NNUNET_PYTHON")


def as_nifti_gz(path: Path, folder: Path) -> Path:
    """nnU-Net reads only its dataset's file ending (.nii.gz): other formats are converted once."""
    if path.name.endswith(".nii.gz"):
        return path.resolve()
    from flare_seg import io

    target = folder / (path.name.split(".")[0] + "_converted.nii.gz")
    if not target.exists():
        array, geometry, _ = io.read_image(path)
        io.write_image(array, geometry, target)
    return target


def _proc_kb(pid: int, name: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{name}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


class TreeSampler(threading.Thread):
    """Peak of the summed RSS / PSS of a process and its descendants, sampled every ``interval`` s."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss_kb = self.peak_pss_kb = self.max_procs = 0
        self.hwm_kb: dict[int, int] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = _tree(self.root)
            rss = pss = 0
            for pid in pids:
                rss += _proc_kb(pid, "status", "VmRSS:")
                pss += _proc_kb(pid, "smaps_rollup", "Pss:")
                hwm = _proc_kb(pid, "status", "VmHWM:")
                if hwm:
                    self.hwm_kb[pid] = max(hwm, self.hwm_kb.get(pid, 0))
            self.peak_rss_kb, self.peak_pss_kb = max(self.peak_rss_kb, rss), max(self.peak_pss_kb, pss)
            self.max_procs = max(self.max_procs, len(pids))
            self.done.wait(self.interval)


def _kill_group(pgid: int) -> None:
    """SIGKILL a run's whole process group: its spawned workers too, which outlive their parent otherwise."""
    try:
        os.killpg(pgid, 9)
    except ProcessLookupError:
        pass


def run_tree(cmd: list[str], env: dict, log: Path, interval: float, timeout: float | None) -> dict:
    """Run ``cmd`` in its own session, sampling its tree; the whole group is killed at the timeout, when
    this script is interrupted or terminated, and after the run (so no stray worker computes on into the
    next measurement)."""
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        deadline = None if timeout is None else t0 + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if deadline and time.perf_counter() > deadline:
                    _kill_group(proc.pid)
                time.sleep(0.05)
        finally:
            _kill_group(proc.pid)
            sampler.done.set()
            sampler.join()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_tree_mb": round(sampler.peak_rss_kb / 1024), "peak_pss_tree_mb": round(sampler.peak_pss_kb / 1024),
           "max_vmhwm_mb": round(max(sampler.hwm_kb.values(), default=0) / 1024), "max_processes": sampler.max_procs}
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        row["error"] = f"exit {proc.returncode}: " + " | ".join(tail)
    return row


def check_labels(labels: Path, shape: tuple[int, ...]) -> dict:
    from flare_seg import io

    if not labels.exists():
        return {"labels_ok": False, "labels_error": f"{labels.name} not written"}
    array, _, _ = io.read_image(labels)
    ok = tuple(array.shape) == tuple(shape)
    return {"labels_ok": ok, "labels_shape": list(array.shape), "label_values": [int(v) for v in np.unique(array)]}


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r and "error" not in r]
    return statistics.median(values) if values else None


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run_tree's cleanup runs on a kill too
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[134], help="slices N of 512x512xN phantoms")
    p.add_argument("--case", type=Path, nargs="+", help="CT files to use instead of phantoms")
    p.add_argument("--repeats", type=int, default=1, help="runs of each tool per case, alternating")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--nnunet-python", help="interpreter with nnunetv2 + torch (default: $NNUNET_PYTHON or the "
                                           "python beside nnUNetv2_predict on PATH)")
    p.add_argument("--flare-engines", nargs="+", default=["default"],
                   help="flare-seg engines to run: default (openvino on CPU), openvino, onnxruntime, tensorflow; "
                        "ENGINE/PRECISION for another precision (e.g. openvino/bf16)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="for both tools")
    p.add_argument("--seed", type=int, default=0, help="torch seed of the random nnU-Net weights")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "flare_seg_bench_nnunet",
                   help="nnU-Net model folder and phantoms (outside the repository)")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between /proc samples")
    p.add_argument("--timeout", type=float, help="seconds per run before it is killed")
    p.add_argument("--skip-nnunet", action="store_true", help="flare-seg only (e.g. to check the setup)")
    p.add_argument("--build-checkpoint", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.build_checkpoint:
        build_checkpoint(args.build_checkpoint, args.seed)
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    model = None if args.skip_nnunet else ensure_model(args.cache, args.nnunet_python, args.seed)
    if model:
        print(f"nnU-Net model: {model['folder']} ({model['parameters'] / 1e6:.2f} M parameters, "
              f"nnunetv2 {model['nnunetv2']}, torch {model['torch']})", flush=True)
    threads = str(args.threads)
    base_env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads}
    nn_env = {**base_env, "nnUNet_raw": str(args.cache / "nnUNet_raw"),
              "nnUNet_preprocessed": str(args.cache / "nnUNet_preprocessed"),
              "nnUNet_results": str(args.cache / "nnUNet_results"), "nnUNet_compile": "false",
              # nnU-Net caps torch's threads at this during the sliding window
              # (predict_logits_from_preprocessed_data), not only its worker processes: "1" ran it
              # single-threaded while flare-seg had --threads; the workers are set by -npp/-nps
              "nnUNet_def_n_proc": threads}
    for key in ("nnUNet_raw", "nnUNet_preprocessed"):
        Path(nn_env[key]).mkdir(exist_ok=True)
    flare_env = {**base_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    cases_dir = args.cache / "cases"
    cases_dir.mkdir(exist_ok=True)
    if args.case:
        cases = [as_nifti_gz(c, cases_dir) for c in args.case]
    else:
        cases = [make_case(n, cases_dir) for n in args.sizes]

    from flare_seg import io

    tools = ([] if args.skip_nnunet else ["nnunet"]) + [f"flare-seg:{e}" for e in args.flare_engines]
    rows, summary = [], []
    for case in cases:
        image, geometry, _ = io.read_image(case)
        shape, spacing = tuple(image.shape), [round(float(s), 4) for s in geometry.spacing_mm]
        del image
        size = "x".join(str(s) for s in shape[::-1])  # x*y*z, as the issue writes it
        case_rows = []
        for repeat in range(args.repeats):
            for tool in tools:
                with tempfile.TemporaryDirectory(dir=args.cache) as work:
                    work = Path(work)
                    inputs, out = work / "in", work / "out"
                    inputs.mkdir()
                    os.symlink(case, inputs / "case_0000.nii.gz")
                    if tool == "nnunet":
                        cmd = [nnunet_exe(args.nnunet_python), "-c", NNUNET_CHILD, threads, "-i", str(inputs),
                               "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres", "-f", "0",
                               "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1",
                               "--disable_progress_bar"]
                        env = nn_env
                    else:
                        engine, _, precision = tool.split(":", 1)[1].partition("/")
                        cmd = [sys.executable, "-c", FLARE_CHILD, "predict", "-q", "-i", str(inputs), "-o", str(out),
                               "--device", "cpu", "--threads", threads, "--no-progress"]
                        cmd += [] if engine == "default" else ["--engine", engine]
                        cmd += ["--precision", precision] if precision else []
                        env = flare_env
                    row = {"case": case.name, "size": size, "spacing_zyx_mm": spacing, "tool": tool,
                           "repeat": repeat, **run_tree(cmd, env, work / "log.txt", args.interval, args.timeout)}
                    if "error" not in row:
                        row.update(check_labels(out / "case.nii.gz", shape))
                rows.append(row)
                case_rows.append(row)
                print(json.dumps(row), flush=True)
        nn = [r for r in case_rows if r["tool"] == "nnunet"]
        for tool in tools:
            mine = [r for r in case_rows if r["tool"] == tool]
            entry = {"case": case.name, "size": size, "tool": tool, "runs": len(mine),
                     "wall_s": median(mine, "wall_s"), "cpu_s": median(mine, "cpu_s"),
                     "peak_rss_tree_mb": median(mine, "peak_rss_tree_mb"),
                     "peak_pss_tree_mb": median(mine, "peak_pss_tree_mb")}
            if tool != "nnunet" and nn and entry["wall_s"] and median(nn, "wall_s"):
                entry["speedup_nnunet_over_this"] = round(median(nn, "wall_s") / entry["wall_s"], 1)
                # CPU seconds: what the ratio would be on a machine not shared with other jobs
                entry["cpu_ratio_nnunet_over_this"] = round(median(nn, "cpu_s") / max(entry["cpu_s"], 0.1), 1)
                entry["memory_ratio_nnunet_over_this"] = round(
                    median(nn, "peak_rss_tree_mb") / entry["peak_rss_tree_mb"], 2)
                entry["meets_speed_target_300x"] = entry["speedup_nnunet_over_this"] >= TARGET_SPEEDUP
                entry["meets_memory_target_quarter"] = entry["memory_ratio_nnunet_over_this"] >= TARGET_MEMORY_RATIO
            summary.append(entry)
            print("SUMMARY " + json.dumps(entry), flush=True)

    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu": cpu_description(),
              "cpus_usable": len(os.sched_getaffinity(0)),
              "load_average_at_end": list(os.getloadavg()), "threads": args.threads,
              "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
              "nnunet": None if model is None else {
                  "dataset": DATASET, "configuration": "3d_fullres", "fold": 0, "tta": False,
                  "patch_size": plans_json()["configurations"]["3d_fullres"]["patch_size"],
                  **{k: model[k] for k in ("parameters", "seed", "nnunetv2", "torch")}},
              "summary": summary, "runs": rows}
    if args.json:
        from flare_seg.atomic import write_text

        write_text(args.json, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
