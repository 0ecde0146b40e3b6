"""``flare-seg benchmark-run``: arguments -> :func:`flare_seg.evaluation.benchmark_run.run_benchmark`, tables, files."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile

from flare_seg import atomic
from flare_seg.evaluation.benchmark_run import format_table, plot_memory, run_benchmark, summarize_runs, write_csv


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cmd", required=True,
                        help="command to run per case, e.g. \"sh predict.sh {input} {output}\"; {input} is a fresh "
                             "folder holding only that case's image, {output} the output folder, {case} the case name")
    parser.add_argument("--inputs", required=True, help="folder of input images (<case>_0000.nii.gz)")
    parser.add_argument("--output-dir", default=None,
                        help="where the command writes <case>.nii.gz (default: a temporary folder, deleted after)")
    parser.add_argument("--json", default=None, help="write every case's record and time series to this JSON file")
    parser.add_argument("--csv", default=None, help="write one line per case to this CSV file")
    parser.add_argument("--plot", default=None, help="write memory over time per case to this PNG")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling interval in seconds (default: 0.1)")
    parser.add_argument("--timeout", type=float, default=None, help="kill a case's command after this many seconds")


def run(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise ValueError(f"--interval must be positive, got {args.interval}")
    with contextlib.ExitStack() as stack:
        output_dir = args.output_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="flare-seg-outputs-"))
        records = run_benchmark(args.cmd, args.inputs, output_dir, args.interval, args.timeout)
    document = {"command": args.cmd, "inputs": str(args.inputs), "output_dir": args.output_dir,
                "interval_s": args.interval, "summary": summarize_runs(records), "cases": records}
    if args.json:
        atomic.write_text(args.json, json.dumps(document) + "\n")  # compact: it holds the time series
    if args.csv:
        write_csv(records, args.csv)
    if args.plot:
        plot_memory(records, args.plot)
    summary = document["summary"]
    print(format_table(records))
    print(f"{summary['cases']} case(s), mean {summary['seconds_mean']:.2f} s, failed {summary['failed']}, "
          f"outputs missing {summary['outputs_missing']}")
    return 1 if summary["failed"] or summary["outputs_missing"] else 0
