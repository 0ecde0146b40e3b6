"""``flare-seg predict -i IN -o OUT``: arguments -> :mod:`flare_seg.predict`, plus the JSON report.

Exit codes: 0 all cases written, 1 some case failed (the others were still written), 2 nothing
could start (bad arguments, missing input, unwritable output folder, unreadable weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def _memory_mode(text: str):
    if text in ("growth", "async"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected growth, async or a limit in MB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"GPU memory limit must be positive, got {value}")
    return value


def _spacing_fix(text: str):
    from flare_seg.io import FLARE_MEAN_SPACING_XYZ

    if text == "flare":
        return FLARE_MEAN_SPACING_XYZ
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected 'flare' or three positive numbers x,y,z in mm, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", type=Path, required=True,
                   help="CT file (.nii.gz, .nii, .nrrd, .mha, .mhd), DICOM folder, or folder of images")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (<case>.nii.gz per input), or a .nii.gz file for a single input")
    p.add_argument("-m", "--model-dir", type=Path, help="folder with loc/ and seg/ (default: bundled weights)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="default: GPU if usable")
    p.add_argument("--fp16", action="store_true", help="float16 inference on the GPU")
    p.add_argument("--gpu-memory", type=_memory_mode, default="growth", metavar="MODE",
                   help="growth (default), async (cuda_malloc_async) or a hard limit in MB")
    p.add_argument("--threads", type=int, help="CPU threads for the network (default: all cores)")
    p.add_argument("--report", type=Path, help="write a JSON report (per case: stage times, memory, box, volumes)")
    p.add_argument("--qc", nargs="?", const=True, default=None, metavar="DIR",
                   help="write a QC PNG per case (axial + coronal overlay), into DIR (default OUT/qc)")
    p.add_argument("--skip-existing", action="store_true", help="skip cases whose output exists (resume a run)")
    p.add_argument("--resample", choices=("linear", "nearest"), default="linear",
                   help="back to the input grid: linear probabilities (default, more exact) or nearest labels")
    p.add_argument("--largest-component", action="store_true", help="box from the largest localized component only")
    p.add_argument("--nonfinite", choices=("replace", "error"), default="replace",
                   help="NaN/inf voxels: replace by -1024 HU with a warning (default) or fail the case")
    p.add_argument("--unit-spacing-fix", type=_spacing_fix, metavar="X,Y,Z|flare",
                   help="spacing to use when a header claims exactly 1x1x1 mm ('flare': 0.8145,0.8145,2.528)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_engine_arguments(p)
    add_hospital_arguments(p)


def add_hospital_arguments(p: argparse.ArgumentParser) -> None:
    """Outputs for the hospital (DICOM-SEG, statistics) and cohort runs on a cluster (issue 14)."""
    group = p.add_argument_group("hospital and cluster")
    group.add_argument("--dicom-seg", action="store_true",
                       help="also write OUT/<case>.seg.dcm, a DICOM Segmentation of each DICOM series input "
                            "(needs the [hospital] extra)")
    group.add_argument("--statistics", action="store_true",
                       help="also write OUT/<case>.statistics.json (per organ: volume, HU, box, components, "
                            "field of view) and, for a folder, OUT/statistics.csv (needs the [hospital] extra)")
    group.add_argument("--dask", metavar="SCHEDULER|local:N",
                       help="run the cases on a Dask cluster (tcp://host:8786), or on a local cluster of N worker "
                            "processes; each worker loads the models once (needs the [cluster] extra)")


def _extras(args, jobs) -> tuple:
    """The extra outputs asked for; refuses up front what cannot work (non-DICOM input for --dicom-seg)."""
    from flare_seg import io

    extras = []
    if args.dicom_seg:
        from flare_seg.dicom_seg import DicomSegOutput
        from flare_seg.extras import require

        require("--dicom-seg", "hospital", "highdicom", "pydicom")
        not_dicom = [job for job in jobs if not job.error and not io.is_dicom_folder(job.input)]
        if len(not_dicom) == len(jobs):
            raise ValueError(f"{jobs[0].input}: --dicom-seg needs DICOM series input (a folder of DICOM files); "
                             "this is not one")
        for job in not_dicom:
            job.error = f"{job.input}: --dicom-seg needs a DICOM series, not an image file; case refused"
        extras.append(DicomSegOutput())
    if args.statistics:
        from flare_seg.extras import require
        from flare_seg.statistics import StatisticsOutput

        require("--statistics", "hospital", "cc3d")
        extras.append(StatisticsOutput())
    return tuple(extras)


def _folder_run(args) -> bool:
    from flare_seg import io

    return args.input.is_dir() and not io.is_dicom_folder(args.input)


def _add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """Engine choice (issue 11): exported OpenVINO / ONNX Runtime pieces or the Keras model on TensorFlow."""
    from flare_seg.engines import DEFAULT_CPU_ENGINE, ENGINES, PRECISION_CHOICES

    group = p.add_argument_group("engine")
    group.add_argument("--engine", choices=ENGINES, default=None,
                       help=f"default: tensorflow on a GPU host, else {DEFAULT_CPU_ENGINE} (no TensorFlow imported)")
    group.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                       help="fp32 (default), bf16 or fp16 where the engine and CPU/GPU support it (--fp16 = fp16); "
                            "auto: bf16 on OpenVINO where this CPU computes it natively, else fp32")
    group.add_argument("--slab-z", type=int, default=None, metavar="N",
                       help="z-slab thickness of the split nets in 2/6 mm voxels (even; default 8)")


def _summary(records: list[dict], wall_seconds: float, sampler_result: dict | None) -> dict:
    ok = [r for r in records if r["status"] == "ok"]
    totals = [r["seconds_total"] for r in ok]
    return {"cases": len(records), "ok": len(ok), "failed": sum(r["status"] == "error" for r in records),
            "skipped": sum(r["status"] == "skipped" for r in records), "wall_seconds": round(wall_seconds, 3),
            "mean_case_seconds": round(sum(totals) / len(totals), 3) if totals else None,
            "memory": sampler_result}


def _print_table(records: list[dict]) -> None:
    print(f"{'case':<28} {'status':<8} {'seconds':>8}  liver   kidney  spleen  pancreas (ml)")
    for r in records:
        vols = r.get("organ_volumes_ml") or {}
        cols = "  ".join(f"{vols.get(k, float('nan')):7.1f}" for k in ("liver", "kidney", "spleen", "pancreas"))
        seconds = r.get("seconds_total")
        shown_seconds = seconds if seconds is not None else ""
        print(f"{r['case'][:28]:<28} {r['status']:<8} {shown_seconds:>8} {cols if vols else ''}")
        if r.get("error"):
            print(f"  error: {r['error']}")


def run(args) -> int:
    from flare_seg import io
    from flare_seg.config import atomic_write_text
    from flare_seg.instrument import MemorySampler
    from flare_seg.predict import SegmentOptions, plan_jobs

    jobs = plan_jobs(args.input, args.output)
    extras = _extras(args, jobs)
    out_dir = jobs[0].output.parent if len(jobs) == 1 else args.output
    io.ensure_writable_folder(out_dir)
    qc_dir = None
    if args.qc is not None:
        qc_dir = io.ensure_writable_folder(out_dir / "qc" if args.qc is True else Path(args.qc))
    t0 = time.perf_counter()
    options = SegmentOptions(resample_mode=args.resample,
                             largest_component_only=True if args.largest_component else None)
    read_kwargs = {"nonfinite": args.nonfinite, "unit_spacing_fix": args.unit_spacing_fix}
    with MemorySampler() as sampler:
        runner = _run_on_dask if args.dask else _run_here
        records, provenance, load_seconds = runner(args, jobs, options, read_kwargs, qc_dir, extras)
    summary = _summary(records, time.perf_counter() - t0, sampler.result())
    summary["model_load_seconds"] = round(load_seconds, 3)
    if args.statistics and _folder_run(args):
        from flare_seg.statistics import CSV_NAME, write_statistics_csv

        summary["statistics_csv"] = str(out_dir / CSV_NAME)
        write_statistics_csv(records, out_dir / CSV_NAME)
    if args.report:
        payload = {"provenance": provenance, "summary": summary, "cases": records}
        atomic_write_text(args.report, json.dumps(payload, indent=2, default=_json_default) + "\n")
    _print_table(records)
    return 1 if summary["failed"] else 0


def _run_here(args, jobs, options, read_kwargs, qc_dir, extras) -> tuple[list[dict], dict, float]:
    """Load the models in this process and run the cases one after the other."""
    from flare_seg.predict import Segmenter, run_jobs

    t0 = time.perf_counter()
    segmenter = Segmenter.load(args.model_dir, device=args.device, memory=args.gpu_memory, fp16=args.fp16,
                               threads=args.threads, engine=args.engine, precision=args.precision,
                               slab_z=args.slab_z)
    load_seconds = time.perf_counter() - t0
    records = run_jobs(segmenter, jobs, options=options, skip_existing=args.skip_existing, qc_dir=qc_dir,
                       read_kwargs=read_kwargs, progress=not args.no_progress, extras=extras)
    return records, segmenter.provenance(), load_seconds


def _run_on_dask(args, jobs, options, read_kwargs, qc_dir, extras) -> tuple[list[dict], dict, float]:
    """One task per case on Dask workers; each worker loads the models once (a worker plugin)."""
    from flare_seg import cohort
    from flare_seg.predict import triage_jobs

    records, todo = triage_jobs(jobs, args.skip_existing, extras)
    if not todo:  # everything refused or already written: no cluster needed
        return records, {"dask": None}, 0.0
    client, cluster = cohort.connect(args.dask)
    try:
        load = cohort.LoadOptions(str(args.model_dir) if args.model_dir else None, args.device, args.gpu_memory,
                                  args.fp16, cohort.local_threads(args.dask, args.threads), args.engine,
                                  args.precision, args.slab_z)
        task = cohort.CaseTask(options, qc_dir, read_kwargs, extras)
        records, report = cohort.run_cohort(client, jobs, load, task, skip_existing=args.skip_existing,
                                            progress=not args.no_progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    provenance = {**(report.pop("provenance") or {}), "dask": report}
    return records, provenance, report["model_load_seconds"]


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def main(argv=None) -> int:
    """Entry of ``inference/predict.py``: ``flare-seg predict`` with the same arguments."""
    import sys

    from flare_seg.cli.main import main as cli_main

    return cli_main(["predict"] + list(argv if argv is not None else sys.argv[1:]))
