"""Cohort runs on a Dask distributed cluster: the edge module that knows Dask.

Each worker loads the two networks once, in :class:`SegmenterPlugin` (a worker plugin, set up once
per worker process), and a case is one task that runs :func:`flare_seg.predict.run_jobs` on that
case alone, so it reads, segments, writes and reports exactly as a local run and its failures
stay its own. Records come back in the jobs' order and go into the same JSON report; jobs refused
up front or skipped (``--skip-existing``) never leave the client. A task that dies for a reason
the local run does not catch (a worker killed for memory, a bug) becomes that case's error record.

Inputs and outputs are paths: the workers must see the same file system as the client (a shared
folder or the same mounts in every container). A worker runs one case at a time
(``--nthreads 1``; the network uses all its cores inside); the plugin's lock guards the models
should a worker be given more threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from flare_seg.extras import require

try:  # the [cluster] extra; without it only connect() is reached, and it says what to install
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - exercised only without the extra
    _WorkerPlugin = object

log = logging.getLogger(__name__)

PLUGIN_NAME = "flare-seg-segmenter"
LOCAL_PREFIX = "local:"


@dataclass
class LoadOptions:
    """How each worker loads the models (the arguments of :meth:`flare_seg.predict.Segmenter.load`)."""

    model_dir: str | None = None
    device: str = "auto"
    memory: object = "growth"
    fp16: bool = False
    threads: int | None = None
    engine: str | None = None
    precision: str | None = None
    slab_z: int | None = None


@dataclass
class CaseTask:
    """What a worker needs besides the job: the options of :func:`flare_seg.predict.run_jobs`."""

    options: object = None
    qc_dir: Path | None = None
    read_kwargs: dict = field(default_factory=dict)
    extras: tuple = ()


class SegmenterPlugin(_WorkerPlugin):
    """Worker plugin: loads the models once when the worker registers it, and counts the loads."""

    name = PLUGIN_NAME

    def __init__(self, load: LoadOptions):
        self.load = load
        self.segmenter = None
        self.model_loads = 0
        self.model_load_seconds = None
        self.lock = None  # made on the worker (a lock cannot travel in a pickle)

    def setup(self, worker=None) -> None:
        from flare_seg.predict import Segmenter

        t0 = time.perf_counter()
        self.lock = threading.Lock()
        self.segmenter = Segmenter.load(self.load.model_dir, device=self.load.device, memory=self.load.memory,
                                        fp16=self.load.fp16, threads=self.load.threads, engine=self.load.engine,
                                        precision=self.load.precision, slab_z=self.load.slab_z)
        self.model_loads += 1
        self.model_load_seconds = round(time.perf_counter() - t0, 3)
        log.info("worker %s: models loaded in %.1f s", getattr(worker, "address", "?"), self.model_load_seconds)

    def teardown(self, worker=None) -> None:
        self.segmenter = None

    def state(self) -> dict:
        return {"model_loads": self.model_loads, "model_load_seconds": self.model_load_seconds,
                "provenance": self.segmenter.provenance() if self.segmenter else None}


def _plugin():
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.segmenter is None:
        raise RuntimeError("flare-seg worker plugin not set up on this worker")
    return plugin


def run_case(job, task: CaseTask) -> dict:
    """One case on a worker (the task function): the worker's models, the local code path."""
    from distributed import get_worker

    from flare_seg.predict import run_jobs

    plugin = _plugin()
    with plugin.lock:
        (record,) = run_jobs(plugin.segmenter, [job], options=task.options, qc_dir=task.qc_dir,
                             read_kwargs=task.read_kwargs, progress=False, extras=task.extras)
    record["worker"] = get_worker().address
    return record


def _worker_state(dask_worker) -> dict:
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    return plugin.state() if plugin is not None else {"model_loads": 0}


def connect(address: str, threads: int | None = None):
    """A Dask client for ``address`` (``tcp://host:8786``), or for a new local cluster (``local:N``)."""
    require("--dask", "cluster", "distributed")
    from distributed import Client, LocalCluster

    if not address.startswith(LOCAL_PREFIX):
        return Client(address, timeout="30s"), None
    try:
        workers = int(address[len(LOCAL_PREFIX):])
    except ValueError:
        workers = 0
    if workers < 1:
        raise ValueError(f"--dask {address}: expected local:N with N >= 1 workers")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def local_threads(address: str, threads: int | None) -> int | None:
    """Network threads per worker: as given, or for ``local:N`` the cores shared out among N workers."""
    if threads or not address.startswith(LOCAL_PREFIX):
        return threads
    workers = max(1, int(address[len(LOCAL_PREFIX):] or 1))
    return max(1, (os.cpu_count() or 1) // workers)


def _failed_task_record(job, err: BaseException) -> dict:
    message = (str(err).splitlines() or [""])[0] or type(err).__name__
    message = f"{job.input}: case failed on its worker ({type(err).__name__}: {message})"
    log.error("%s", message)
    return {"case": job.case, "input": str(job.input), "output": str(job.output), "status": "error",
            "error": message}


def run_cohort(client, jobs: list, load: LoadOptions, task: CaseTask, *, skip_existing: bool = False,
               progress: bool = True) -> tuple[list[dict], dict]:
    """Run ``jobs`` on the client's workers, one task per case; returns (records, cluster report).

    Records are in the order :func:`flare_seg.predict.run_jobs` gives (refused and skipped first,
    then the jobs run, in order). The cluster report names each worker with its model loads and
    cases, and holds the provenance (version, weights sha256, device) of a worker's models.
    """
    from distributed import as_completed
    from tqdm import tqdm

    from flare_seg.predict import triage_jobs

    records, todo = triage_jobs(jobs, skip_existing, task.extras)
    t0 = time.perf_counter()
    client.register_plugin(SegmenterPlugin(load), name=PLUGIN_NAME)
    load_seconds = time.perf_counter() - t0
    futures = [client.submit(run_case, job, task, key=f"flare-seg-{i}-{job.case}", pure=False)
               for i, job in enumerate(todo)]
    results: dict = {}
    with tqdm(total=len(futures), unit="case", disable=not progress) as bar:
        for future in as_completed(futures):
            index = futures.index(future)
            try:
                results[index] = future.result()
            except Exception as err:  # any task failure (killed worker, bug) is that case's error alone
                results[index] = _failed_task_record(todo[index], err)
            bar.update()
    records += [results[i] for i in range(len(todo))]
    workers = client.run(_worker_state)
    provenances = [state.pop("provenance", None) for state in workers.values()]
    for address, state in workers.items():
        state["cases"] = sum(r.get("worker") == address for r in records)
    return records, {"scheduler": client.scheduler.address, "workers": workers,
                     "model_load_seconds": round(load_seconds, 3),
                     "provenance": next((p for p in provenances if p), None)}
