"""``flare-seg benchmark-run``: FLARE's efficiency protocol around any command, one case at a time.

For every image in the input folder (``<case>_0000.nii.gz`` and other image files), the image is
copied alone into a fresh temporary input folder and the command runs in a fresh process, so
every case pays process start, imports and model loading, as in FLARE's ``docker run`` per case.
The command is split with :func:`shlex.split` (no shell) and ``{input}`` (that temporary folder),
``{output}`` (the output folder) and ``{case}`` are substituted in each of its words. Wall seconds
are measured around the process; :class:`flare_seg.instrument.MemorySampler` samples device GPU
memory (NVML, whole MiB; null without a GPU) and the process tree's RSS at 10 Hz. The output
counts as present when ``<output>/<case>.nii.gz`` was written during the run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from flare_seg.atomic import atomic_path

log = logging.getLogger(__name__)

PLACEHOLDERS = ("{input}", "{output}", "{case}")
CSV_COLUMNS = ("case", "input", "seconds", "exit_code", "timed_out", "output_present", "samples",
               "gpu_idle_mib", "gpu_max_mib", "gpu_stable_max_mib", "gpu_area_mib_s",
               "rss_max_mib", "rss_stable_max_mib", "rss_area_mib_s")
LOG_TAIL_LINES = 20


def list_inputs(input_dir: str | Path) -> list[Path]:
    """The image files of ``input_dir`` (``*_0000.nii.gz`` or any image suffix), sorted by name."""
    from flare_seg.io import image_suffix

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: input folder does not exist")
    images = sorted(p for p in input_dir.iterdir() if p.is_file() and image_suffix(p) and not p.name.startswith("."))
    if not images:
        raise ValueError(f"{input_dir}: no image files (.nii.gz, .nii, .nrrd, .mha, ...) to run on")
    return images


def build_command(template: str, input_dir: Path, output_dir: Path, case: str) -> list[str]:
    """The argument list: ``template`` split like a POSIX shell would, placeholders substituted per
    word (so paths with spaces stay one argument). Other braces are left alone."""
    try:
        words = shlex.split(template)
    except ValueError as err:
        raise ValueError(f"--cmd {template!r}: cannot split into arguments ({err})") from None
    if not words:
        raise ValueError("--cmd is empty")
    values = {"{input}": str(input_dir), "{output}": str(output_dir), "{case}": case}
    argv = []
    for word in words:
        for placeholder, value in values.items():
            word = word.replace(placeholder, value)
        argv.append(word)
    return argv


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def _log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _kill_group(process: subprocess.Popen) -> None:
    """Kill the process group this run started (``start_new_session``); the leader is not reaped
    yet, so its id still names that group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait(process: subprocess.Popen, timeout_s: float | None) -> tuple[int, bool]:
    """Exit code and whether the run timed out; on a timeout the process group is killed."""
    try:
        return process.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        _kill_group(process)
        return process.returncode, True


def _launch(argv: list[str], log_handle) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as err:
        raise ValueError(f"cannot start command {argv[0]!r}: {err.strerror or err}") from None


def run_case(template: str, image: Path, output_dir: Path, probe, interval_s: float = 0.1,
             timeout_s: float | None = None) -> dict:
    """Run the command on ``image`` alone and measure it; returns the case record (with series)."""
    from flare_seg.instrument import MemorySampler
    from flare_seg.io import case_name

    case = case_name(image)
    expected = output_dir / f"{case}.nii.gz"
    before = _file_state(expected)
    with tempfile.TemporaryDirectory(prefix=f"flare-seg-bench-{case}-") as work:
        input_dir = Path(work) / "inputs"
        input_dir.mkdir()
        shutil.copyfile(image, input_dir / image.name)
        argv = build_command(template, input_dir, output_dir, case)
        log_path = Path(work) / "command.log"
        gpu_idle_mib = probe.used_mib() if probe.available else None
        with log_path.open("wb") as log_handle:
            start = time.perf_counter()
            process = _launch(argv, log_handle)
            sampler = MemorySampler(interval_s, pid=process.pid, include_children=True, probe=probe).start()
            try:
                exit_code, timed_out = _wait(process, timeout_s)
                seconds = time.perf_counter() - start
            finally:
                sampler.stop()
                if process.poll() is None:  # interrupted: do not leave the run behind
                    _kill_group(process)
        tail = _log_tail(log_path) if exit_code != 0 else ""
    after = _file_state(expected)
    record = _record(case, image, seconds, exit_code, timed_out, after is not None and after != before,
                     gpu_idle_mib, sampler.result(series=True))
    if exit_code != 0:
        record["log_tail"] = tail
        log.warning("case %s: command exited with %s%s; last output:\n%s", case, exit_code,
                    " (timed out)" if timed_out else "", tail)
    elif not record["output_present"]:
        log.warning("case %s: command succeeded but did not write %s", case, expected)
    return record


def _record(case: str, image: Path, seconds: float, exit_code: int, timed_out: bool, output_present: bool,
            gpu_idle_mib: int | None, memory: dict) -> dict:
    from flare_seg.instrument import to_mib

    gpu, rss = memory["gpu_used_mib"] or {}, memory["rss_bytes"] or {}
    return {
        "case": case, "input": image.name, "seconds": round(seconds, 4), "exit_code": exit_code,
        "timed_out": timed_out, "output_present": output_present, "samples": memory["samples"],
        "gpu_idle_mib": gpu_idle_mib, "gpu_max_mib": gpu.get("max"), "gpu_stable_max_mib": gpu.get("stable_max"),
        "gpu_area_mib_s": _round(gpu.get("area_mib_s")),
        "rss_max_mib": to_mib(rss["max"]) if rss else None,
        "rss_stable_max_mib": to_mib(rss["stable_max"]) if rss else None,
        "rss_area_mib_s": _round(rss.get("area_mib_s")), "series": memory["series"],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def run_benchmark(template: str, inputs_dir: str | Path, output_dir: str | Path, interval_s: float = 0.1,
                  timeout_s: float | None = None, probe=None) -> list[dict]:
    """Run ``template`` once per input image (see the module docstring); one record per case."""
    from flare_seg.instrument import NvmlProbe

    images = list_inputs(inputs_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not any(p in template for p in PLACEHOLDERS):
        log.warning("--cmd uses none of %s: every run sees the same arguments", ", ".join(PLACEHOLDERS))
    own_probe = probe is None
    probe = NvmlProbe() if own_probe else probe
    if not probe.available:
        log.info("no GPU measured (%s): GPU columns are null", getattr(probe, "reason", "probe unavailable"))
    try:
        records = []
        for number, image in enumerate(images, start=1):
            log.info("case %d/%d: %s", number, len(images), image.name)
            records.append(run_case(template, image, output_dir, probe, interval_s, timeout_s))
        return records
    finally:
        if own_probe:
            probe.close()


# ----------------------------------------------------------------------------- outputs
def summarize_runs(records: list[dict]) -> dict:
    """Means and maxima over cases (None where nothing was measured)."""
    def values(key):
        return [r[key] for r in records if r[key] is not None]

    def mean(key):
        return round(sum(values(key)) / len(values(key)), 4) if values(key) else None

    return {"cases": len(records), "failed": sum(r["exit_code"] != 0 for r in records),
            "outputs_missing": sum(not r["output_present"] for r in records),
            "seconds_mean": mean("seconds"), "seconds_total": round(sum(values("seconds")), 4),
            "gpu_stable_max_mib_mean": mean("gpu_stable_max_mib"),
            "gpu_stable_max_mib_max": max(values("gpu_stable_max_mib"), default=None),
            "gpu_area_mib_s_mean": mean("gpu_area_mib_s"),
            "rss_stable_max_mib_mean": mean("rss_stable_max_mib"),
            "rss_max_mib_max": max(values("rss_max_mib"), default=None)}


def write_csv(records: list[dict], path: str | Path) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: "" if record[k] is None else record[k] for k in CSV_COLUMNS})


def plot_memory(records: list[dict], path: str | Path) -> None:
    """PNG of memory over time, one line per case: RSS (MiB) and, if measured, GPU used (MiB)."""
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    with_gpu = any(r["series"]["gpu_used_mib"] for r in records)
    figure = Figure(figsize=(8, 6 if with_gpu else 3.5), layout="constrained")
    panels = figure.subplots(2 if with_gpu else 1, 1, sharex=True, squeeze=False)[:, 0]
    for record in records:
        series = record["series"]
        panels[0].plot(series["t_s"], [float("nan") if v is None else v for v in series["rss_mib"]],
                       label=record["case"])
        if with_gpu and series["gpu_used_mib"]:
            panels[1].plot(series["t_s"], [float("nan") if v is None else v for v in series["gpu_used_mib"]])
    panels[0].set_ylabel("process-tree RSS (MiB)")
    if with_gpu:
        panels[1].set_ylabel("GPU used, device (MiB)")
    panels[-1].set_xlabel("time since start of the case (s)")
    if len(records) <= 12:
        panels[0].legend(fontsize="small")
    for axes in panels:
        axes.grid(alpha=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")


def format_table(records: list[dict]) -> str:
    def text(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    header = f"{'case':<24} {'seconds':>8} {'exit':>5} {'output':>6} {'GPU stable MiB':>14} " \
             f"{'GPU MiB*s':>10} {'RSS stable MiB':>14} {'RSS max MiB':>11}"
    lines = [header, "-" * len(header)]
    for r in records:
        output = "yes" if r["output_present"] else "NO"
        lines.append(f"{r['case']:<24} {r['seconds']:>8.2f} {r['exit_code']:>5} {output:>6} "
                     f"{text(r['gpu_stable_max_mib']):>14} {text(r['gpu_area_mib_s'], '{:.0f}'):>10} "
                     f"{text(r['rss_stable_max_mib']):>14} {text(r['rss_max_mib']):>11}")
    return "\n".join(lines)
