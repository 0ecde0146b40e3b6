"""Inference: one case (from a file or from arrays in memory) and a list of cases.

read CT -> canonical orientation -> localizer at 6 mm -> foreground box (+ margin) -> SCN at 2 mm
in the box -> labels back on the input grid -> write. Models are rebuilt from the config JSON
beside their weights and loaded once per :class:`Segmenter`; each network is compiled once per
valid input size. Every stage is timed into the case's report.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flare_seg import __version__
from flare_seg.anatomical import coarse_mask_channel, with_channel
from flare_seg.config import LocalizerConfig, SegmenterConfig, load_config, replace
from flare_seg.geometry import IDENTITY_DIRECTION, Geometry, from_canonical, to_canonical
from flare_seg.instrument import MemorySampler, StageTimer, peak_rss_bytes
from flare_seg.labels import NAMES, ORGANS
from flare_seg.preprocess import Box, GridRecord, box_in_input, clamp_padding, loc_input, seg_input, to_input_grid
from flare_seg.report import BoxReport, CaseReport, GridReport

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.weights.h5"
#: A volume thinner than this along an axis is processed, with a warning.
THIN_VOLUME_MM = 30.0
CONFIG_FILE = "config.json"


def default_model_dir() -> Path:
    """The bundled weights: ``flare_seg/bundled_weights`` when installed, ``weights/`` in a checkout."""
    try:
        from importlib import resources

        path = Path(str(resources.files("flare_seg.bundled_weights")))
        if (path / "seg" / CONFIG_FILE).exists():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[1] / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    config: object
    model: object
    predict: object
    weights_sha256: str
    folder: str
    warnings: list[str] = field(default_factory=list)
    engine_info: dict = field(default_factory=lambda: {"engine": "tensorflow"})


def load_model(folder: str | Path, expected: type, dtype_policy: str | None = None) -> LoadedModel:
    """Rebuild a network from ``folder/config.json`` and load ``folder/model.weights.h5`` (sha256-checked)."""
    from flare_seg.models import build_model
    from flare_seg.runtime import compiled_predictor

    folder = Path(folder)
    config = load_config(folder / CONFIG_FILE)
    if not isinstance(config, expected):
        raise ValueError(f"{folder / CONFIG_FILE}: holds a {type(config).__name__}, expected {expected.__name__}")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weights file not found")
    sha, warnings = check_weights_sha256(weights)
    if dtype_policy is not None:
        config = replace(config, dtype_policy=dtype_policy)
    model = build_model(config)
    load_weights_strictly(model, weights)
    return LoadedModel(config, model, compiled_predictor(model), sha, str(folder), warnings)


def check_weights_sha256(weights: Path) -> tuple[str, list[str]]:
    """The file's sha256, checked against ``<weights>.sha256``; without that file a logged warning
    (returned too, for the report) says the integrity cannot be checked. Never silently trusted."""
    sha = sha256_of(weights)
    sha_file = weights.with_name(f"{weights.name}.sha256")
    if not sha_file.exists():
        message = f"{weights}: no {sha_file.name} beside it, so its integrity cannot be checked"
        log.warning(message)
        return sha, [message]
    recorded = (sha_file.read_text().split() or [""])[0]
    if recorded != sha:
        raise ValueError(f"{weights}: sha256 {sha[:12]}… does not match {sha_file.name} (corrupted or replaced)")
    return sha, []


def load_weights_strictly(model, weights: Path) -> None:
    """``model.load_weights`` as one ``ValueError`` naming the file and the cause: h5py cannot open it
    (corrupt, truncated), shapes do not fit, or Keras would leave some layers freshly initialised
    (it only warns about that)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(weights)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{weights}: cannot load weights ({_weights_reason(err)})") from None
    skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)
               or "could not be loaded" in str(w.message)]
    if skipped:
        raise ValueError(f"{weights}: cannot load weights (the file lacks {len(skipped)} part(s) of the network, "
                         f"e.g. {skipped[0].splitlines()[0][:160]})")


def _weights_reason(err: Exception) -> str:
    """The line of a Keras/h5py message that says why (a shape mismatch), not its preamble."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    shape = next((ln for ln in lines if "variable.shape=" in ln), None)
    if shape is not None:
        found = shape[shape.index("variable.shape="):].split(". Target variable")[0]
        return f"shapes do not fit the network in {CONFIG_FILE}: {found}"[:300]
    return (lines[0] if lines else type(err).__name__)[:300]


@dataclass
class SegmentOptions:
    """Options of one segmentation (beyond the models)."""

    resample_mode: str = "linear"
    largest_component_only: bool | None = None  # None: as the segmenter's config says


@dataclass
class CaseResult:
    """Labels on the input grid (input orientation, uint8) and the case's report."""

    labels: np.ndarray
    report: CaseReport = field(default_factory=CaseReport)


def label_counts(labels: np.ndarray, num_labels: int, chunk_voxels: int = 1 << 22) -> np.ndarray:
    """Voxels per label, a few million at a time: ``np.bincount`` casts uint8 to int64, so on the
    whole of a 512x512x300 map it briefly needs 630 MB (measured: the case's peak RSS, 1.43 GB)."""
    flat = labels.reshape(-1)
    counts = np.zeros(num_labels, dtype=np.int64)
    for start in range(0, flat.size, chunk_voxels):
        counts += np.bincount(flat[start : start + chunk_voxels], minlength=num_labels)[:num_labels]
    return counts


def _grid_report(x: np.ndarray, record: GridRecord) -> GridReport:
    return GridReport(list(x.shape), record.spacing_mm[0])


class Segmenter:
    """The two networks, loaded once; :meth:`segment` runs the pipeline on one volume."""

    def __init__(self, loc: LoadedModel, seg: LoadedModel, device_info=None):
        self.loc = loc
        self.seg = seg
        self.device_info = device_info

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, device: str = "auto", memory="growth",
             fp16: bool = False, threads: int | None = None, engine: str | None = None,
             precision: str | None = None, slab_z: int | None = None) -> Segmenter:
        """Load ``model_dir/loc`` and ``model_dir/seg`` (default: bundled) on ``engine``.

        ``engine``: ``openvino`` / ``onnxruntime`` (the exported pieces, no TensorFlow or Keras
        imported) or ``tensorflow`` (the Keras model; device and GPU memory set up first); ``None``
        chooses TensorFlow on a GPU host, else :data:`flare_seg.engines.DEFAULT_CPU_ENGINE`.
        ``precision``: ``fp32`` (default), ``bf16``, ``fp16`` (``fp16=True`` is ``fp16``) or ``auto``
        (:func:`flare_seg.engines.resolve_precision`: bf16 on OpenVINO where the CPU has it natively).
        ``slab_z``: z-slab thickness of the split nets (exported engines only).
        """
        from flare_seg.engines import choose_engine, is_exported

        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        chosen = choose_engine(engine, device)
        if engine is None and chosen != "tensorflow" and not is_exported(model_dir):
            log.warning("%s holds no exported networks (flare-seg export -m %s -o %s): using the tensorflow engine",
                        model_dir, model_dir, model_dir)
            chosen = "tensorflow"
        engine = chosen
        from flare_seg.engines import resolve_precision

        precision = resolve_precision(precision or ("fp16" if fp16 else "fp32"), engine)
        if engine == "tensorflow":
            return cls._load_tensorflow(model_dir, device, memory, threads, precision)
        from flare_seg.engines import load_exported
        from flare_seg.runtime import DeviceInfo

        if device == "gpu":
            log.warning("--device gpu: the %s engine runs on the CPU (use --engine tensorflow on a GPU)", engine)
        loc = load_exported(model_dir / "loc", LocalizerConfig, engine, precision, threads, slab_z)
        seg = load_exported(model_dir / "seg", SegmenterConfig, engine, precision, threads, slab_z)
        return cls(loc, seg, DeviceInfo(f"none ({engine} engine)", "cpu", "cpu"))

    @classmethod
    def _load_tensorflow(cls, model_dir: Path, device: str, memory, threads, precision: str) -> Segmenter:
        from flare_seg.engines.tensorflow import POLICY
        from flare_seg.runtime import configure_device

        info = configure_device(device, memory, threads)
        policy = POLICY[precision] if info.device == "gpu" or precision == "bf16" else None
        if precision == "fp16" and info.device != "gpu":
            log.warning("fp16 applies on a GPU only; running float32 on the CPU")
        loc = load_model(model_dir / "loc", LocalizerConfig, policy)
        seg = load_model(model_dir / "seg", SegmenterConfig, policy)
        return cls(loc, seg, info)

    def provenance(self) -> dict:
        """Version, weights, device, and every warning of the set-up (device, unchecked weights)."""
        info = self.device_info.to_dict() if self.device_info else {}
        warnings = list(getattr(self.device_info, "warnings", None) or [])
        warnings += list(getattr(self.loc, "warnings", [])) + list(getattr(self.seg, "warnings", []))
        return {"flare_seg_version": __version__, "weights_sha256": {"loc": self.loc.weights_sha256,
                "seg": self.seg.weights_sha256}, "model_dir": str(Path(self.seg.folder).parent),
                "engine": self.seg.engine_info, **info, "warnings": warnings}

    def _run(self, loaded: LoadedModel, x: np.ndarray, name: str, report: CaseReport) -> dict:
        batch = x[None, ..., None] if x.ndim == 3 else x[None]  # (z, y, x[, channels])
        if loaded.engine_info["engine"] != "tensorflow":  # CPU engines: no device allocator
            report.allocator_peak_bytes[name] = None
            return loaded.predict(batch)
        from flare_seg.runtime import allocator_peak_bytes

        allocator_peak_bytes(reset=True)
        out = loaded.predict(batch)
        report.allocator_peak_bytes[name] = allocator_peak_bytes()
        return out

    def segment(self, array_hu: np.ndarray, geometry: Geometry, options: SegmentOptions | None = None,
                timer: StageTimer | None = None) -> CaseResult:
        """Segment a ``(z, y, x)`` HU array lying on ``geometry``; labels come back on the same grid."""
        check_input_array(array_hu, geometry)
        options = options or SegmentOptions()
        timer = timer or StageTimer()
        report = CaseReport()
        with timer.stage("loc_preprocess"):
            canon, canon_geometry, orient = to_canonical(clamp_padding(array_hu), geometry)
        box = self._localize(canon, canon_geometry, options, timer, report)
        if box is None:
            report.notes.append("localizer found no organ: all-background label map")
            report.organ_volumes_ml = {NAMES[o]: 0.0 for o in ORGANS}
            return CaseResult(np.zeros(array_hu.shape, dtype=np.uint8), report)
        canon_labels = self._segment_box(canon, canon_geometry, box, options, timer, report)
        with timer.stage("to_input_grid"):
            labels = np.ascontiguousarray(from_canonical(canon_labels, orient))
        counts = label_counts(labels, len(NAMES))
        report.organ_volumes_ml = {NAMES[o]: round(float(counts[o]) * geometry.voxel_volume_ml, 2) for o in ORGANS}
        return CaseResult(labels, report)

    def _localize(self, canon, canon_geometry: Geometry, options, timer, report) -> Box | None:
        """Localizer on the whole (canonical) image at 6 mm -> foreground box in input voxels, or None."""
        with timer.stage("loc_preprocess"):
            x_loc, loc_record = loc_input(canon, canon_geometry.spacing_mm, self.loc.config.preprocess)
        report.localizer = _grid_report(x_loc, loc_record)
        thin = [f"{n} voxels ({e:.0f} mm) along {axis}" for axis, n, e in
                zip("zyx", canon.shape, canon_geometry.extent_mm, strict=True) if e < THIN_VOLUME_MM]
        if thin:
            report.warnings.append(f"thin volume: {', '.join(thin)}; organs are likely cut off and "
                                      "the localizer sees little context")
        with timer.stage("loc_predict"):
            logits = self._run(self.loc, x_loc, "loc", report)["logits"][0]
        with timer.stage("roi"):
            largest = options.largest_component_only
            if largest is None:
                largest = self.seg.config.preprocess.largest_component_only
            box = box_in_input(np.argmax(logits, axis=-1) > 0, loc_record, largest)
            self._coarse = (np.argmax(logits, axis=-1) > 0, loc_record)  # anatomical attention's landmark
        report.box = None if box is None else BoxReport.from_box(box, canon_geometry, canon.shape)
        if report.box is not None and report.box.touches_border:
            report.warnings.append("organ box touches the image border: organs may be cut off by the field of view")
        return box

    def _segment_box(self, canon, canon_geometry: Geometry, box: Box, options, timer, report) -> np.ndarray:
        """SCN at 2 mm around ``box`` -> uint8 labels on the canonical input grid."""
        with timer.stage("seg_preprocess"):
            x_seg, seg_record = seg_input(canon, canon_geometry.spacing_mm, box, self.seg.config.preprocess)
        report.segmenter = _grid_report(x_seg, seg_record)
        if self.seg.config.anatomical_attention:  # seed 000: + distance to the localizer's coarse mask
            with timer.stage("seg_preprocess"):
                x_seg = with_channel(x_seg, coarse_mask_channel(*self._coarse, seg_record))
        with timer.stage("seg_predict"):
            out = self._run(self.seg, x_seg, "seg", report)
            prob = out["prob"][0]
        if "presence" in out:  # seed 001's head: prob is already scaled by it, inside the model
            report.organ_presence = presence_probabilities(out["presence"][0])
        with timer.stage("to_input_grid"):
            return to_input_grid(prob, seg_record, mode=options.resample_mode)

def presence_probabilities(logits) -> dict[str, float]:
    """The presence head's ``(organs,)`` logits as ``{organ name: probability}`` (4 decimals)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    return {NAMES[k + 1]: round(float(1.0 / (1.0 + np.exp(-v))), 4) for k, v in enumerate(logits)}


def check_input_array(array_hu, geometry: Geometry) -> None:
    """The checks a file gets on reading, for an in-memory array: a ``ValueError`` saying what is wrong
    (not 3-D, not real numbers, NaN/inf, a shape that is not ``geometry``'s)."""
    if not isinstance(array_hu, np.ndarray):
        raise ValueError(f"array_hu: expected a NumPy array, got {type(array_hu).__name__}")
    if array_hu.ndim != 3:
        raise ValueError(f"array_hu: expected a 3-D (z, y, x) CT array, got {array_hu.ndim}-D shape {array_hu.shape}")
    if array_hu.dtype == np.bool_ or not (np.issubdtype(array_hu.dtype, np.integer)
                                          or np.issubdtype(array_hu.dtype, np.floating)):
        raise ValueError(f"array_hu: expected integer or float HU values, got dtype {array_hu.dtype}")
    if array_hu.size == 0:
        raise ValueError(f"array_hu: has no voxels (shape {array_hu.shape})")
    if tuple(array_hu.shape) != tuple(geometry.shape):
        raise ValueError(f"array_hu: shape {array_hu.shape} does not match the geometry's {tuple(geometry.shape)}")
    if np.issubdtype(array_hu.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array_hu)))
        if bad:
            raise ValueError(f"array_hu: {bad} non-finite voxels (NaN/inf); replace them first "
                             "(a file reader replaces them by -1024 HU with a warning)")


def _spacing_of(spacing_mm) -> tuple[float, float, float]:
    values = np.asarray(spacing_mm, dtype=np.float64).ravel()
    if values.size != 3 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing_mm: expected three positive finite numbers (z, y, x), got {spacing_mm!r}")
    return tuple(float(v) for v in values)


#: One Segmenter per model folder for :func:`segment` without ``segmenter=`` (loading is seconds).
_SEGMENTERS: dict[str, Segmenter] = {}


def cached_segmenter(model_dir=None) -> Segmenter:
    """The :class:`Segmenter` of ``model_dir`` (default: bundled), loaded on first use and kept."""
    key = str(Path(model_dir).resolve()) if model_dir is not None else str(default_model_dir().resolve())
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter.load(key)
    return _SEGMENTERS[key]


def segment(array_hu: np.ndarray, spacing_mm, *, segmenter: Segmenter | None = None, model_dir=None,
            origin_mm=(0.0, 0.0, 0.0), direction=None, options: SegmentOptions | None = None) -> np.ndarray:
    """Segment an in-memory ``(z, y, x)`` HU array with ``spacing_mm`` ``(z, y, x)``; returns uint8 labels.

    Without ``segmenter`` the models of ``model_dir`` are loaded on the first call and reused after.
    Bad input (not 3-D, NaN/inf, non-positive spacing, non-numeric dtype) is a ``ValueError``.
    """
    if not isinstance(array_hu, np.ndarray):
        array_hu = np.asarray(array_hu)
    spacing = _spacing_of(spacing_mm)
    if array_hu.ndim != 3:
        check_input_array(array_hu, Geometry((1, 1, 1), spacing))  # raises the not-3-D error
    segmenter = segmenter or cached_segmenter(model_dir)
    geometry = Geometry(tuple(array_hu.shape), spacing, tuple(origin_mm),
                        tuple(direction) if direction is not None else IDENTITY_DIRECTION)
    return segmenter.segment(array_hu, geometry, options).labels


def segment_file(segmenter: Segmenter, volume, output_path: str | Path, options: SegmentOptions | None = None,
                 timer: StageTimer | None = None, qc_path: str | Path | None = None,
                 extras: tuple = ()) -> CaseReport:
    """Segment a read :class:`flare_seg.io.Volume`, write the label map atomically; returns the report.

    ``extras``: per-case extra outputs (:class:`flare_seg.dicom_seg.DicomSegOutput`,
    :class:`flare_seg.statistics.StatisticsOutput`), each called after the label map is written as
    ``extra(volume, labels, output_path, segmenter) -> dict`` (its fields set on the report) and
    timed as its ``stage``.
    """
    from flare_seg import io

    timer = timer or StageTimer()
    result = segmenter.segment(volume.array, volume.geometry, options, timer)
    with timer.stage("write"):
        io.write_labels(result.labels, volume.geometry, output_path)
    report = result.report
    report.warnings = list(volume.warnings) + report.warnings
    if qc_path is not None:
        with timer.stage("qc"):
            from flare_seg.evaluation.qc import overlay_png

            overlay_png(volume.array, result.labels, volume.geometry, qc_path, title=Path(output_path).name)
        report.qc_png = str(qc_path)
    for extra in extras:
        with timer.stage(extra.stage):
            entries = extra(volume, result.labels, Path(output_path), segmenter)
        report.warnings += entries.pop("warnings", [])
        report.set_outputs(entries)
    return report


# ----------------------------------------------------------------------------- many cases


@dataclass
class Job:
    """One case: input (file or DICOM folder) -> output file; ``error`` set when refused up front."""

    input: Path
    output: Path
    case: str
    error: str | None = None


def output_name(path: Path) -> str:
    """``<case>_0000.nii.gz`` -> ``<case>.nii.gz``; ``<name>.<ext>`` -> ``<name>.nii.gz``;
    a DICOM folder -> ``<folder>.nii.gz``."""
    from flare_seg.io import case_name

    return f"{case_name(path)}.nii.gz"


def plan_jobs(inp: str | Path, out: str | Path) -> list[Job]:
    """Input file, DICOM folder or folder of images -> jobs, with FLARE naming and collision checks.

    ``out`` is a folder, or with a single input a file ending in an image suffix (written exactly
    there). An output that would overwrite an input, or another case's output, refuses that case.
    """
    from flare_seg import io

    inp, out = Path(inp), Path(out)
    if not inp.exists():
        raise FileNotFoundError(f"{inp}: input not found")
    if inp.is_file() or io.is_dicom_folder(inp):
        if inp.is_file() and not io.image_suffix(inp):
            raise ValueError(f"{inp}: not an image file (expected {', '.join(io.IMAGE_SUFFIXES)} or a DICOM folder)")
        target = out if io.image_suffix(out) and not out.is_dir() else out / output_name(inp)
        return _check_collisions([Job(inp, target, io.case_name(inp))], {inp.resolve()})
    inputs = sorted(p for p in inp.iterdir() if (p.is_file() and io.image_suffix(p) and not p.name.startswith(".")))
    inputs += sorted(p for p in inp.iterdir() if p.is_dir() and io.is_dicom_folder(p))
    skipped = sorted(p.name for p in inp.iterdir() if p.is_file() and not io.image_suffix(p))
    if skipped:
        log.warning("%s: ignoring %d non-image file(s): %s", inp, len(skipped), ", ".join(skipped[:5]))
    if not inputs:
        raise ValueError(f"{inp}: folder holds no images ({', '.join(io.IMAGE_SUFFIXES)}) or DICOM series")
    if io.image_suffix(out) and not out.is_dir():
        raise ValueError(f"{out}: a single output file was given but {inp} holds {len(inputs)} inputs; give a folder")
    jobs = [Job(p, out / output_name(p), io.case_name(p)) for p in inputs]
    return _check_collisions(jobs, {p.resolve() for p in inputs})


def _check_collisions(jobs: list[Job], input_paths: set) -> list[Job]:
    seen: dict = {}
    for job in jobs:
        target = job.output.resolve()
        if target in input_paths:
            job.error = f"{job.input}: output {job.output} would overwrite an input; choose another output folder"
        elif target in seen:
            job.error = f"{job.input}: output {job.output} is also the output of {seen[target]}; rename one input"
        else:
            seen[target] = job.input
    return jobs


def run_jobs(segmenter: Segmenter, jobs: list[Job], *, options: SegmentOptions | None = None,
             skip_existing: bool = False, qc_dir: Path | None = None, read_kwargs: dict | None = None,
             progress: bool = True, extras: tuple = ()) -> list[dict]:
    """Run jobs in order, reading the next case in a background thread while this one is predicted.

    A failing case gets a record with its error (one line naming the file); the others still run.
    ``extras`` are extra outputs per case (see :func:`segment_file`); ``skip_existing`` skips a case
    only when its label map and all its extra outputs exist.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from flare_seg import io

    read_kwargs = read_kwargs or {}
    _remove_killed_runs_temporaries({job.output.parent for job in jobs} | ({qc_dir} if qc_dir else set()))
    records, todo = triage_jobs(jobs, skip_existing, extras)

    def read(job: Job):
        t0 = time.perf_counter()
        return io.read_ct(job.input, **read_kwargs), time.perf_counter() - t0

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reader") as pool:
        pending = pool.submit(read, todo[0]) if todo else None
        for i, job in enumerate(tqdm(todo, unit="case", disable=not progress)):
            future, pending = pending, (pool.submit(read, todo[i + 1]) if i + 1 < len(todo) else None)
            records.append(_run_one(segmenter, job, future, options, qc_dir, extras))
    return records


def triage_jobs(jobs: list[Job], skip_existing: bool = False, extras: tuple = ()) -> tuple[list[dict], list[Job]]:
    """Records of the jobs refused up front or skipped (outputs exist and are whole), and the jobs left to run."""
    records, todo = [], []
    for job in jobs:
        if job.error:
            records.append(CaseReport(job.case, str(job.input), status="error", error=job.error).to_dict())
            log.error(job.error)
        elif skip_existing and _complete_output(job.output) and all(p.exists() for p in outputs_of(job, extras)):
            records.append(CaseReport(job.case, str(job.input), str(job.output), status="skipped").to_dict())
        else:
            todo.append(job)
    return records, todo


def outputs_of(job: Job, extras: tuple = ()) -> list[Path]:
    """Every file a job writes: its label map and its extra outputs."""
    return [job.output] + [extra.path_for(job.output) for extra in extras]


def _remove_killed_runs_temporaries(folders) -> None:
    """Temporary files of a killed earlier run (``kill -9`` mid-write) go; a concurrent run's stay."""
    from flare_seg.atomic import remove_stale_temporaries

    for folder in sorted(folders):
        for path in remove_stale_temporaries(folder):
            log.info("removed %s, left by a killed run", path)


def _complete_output(path: Path) -> bool:
    """Whether ``path`` is a whole label map (for ``--skip-existing``); a damaged one is redone."""
    from flare_seg import io

    if not path.is_file():
        return False
    try:
        io.check_nifti_complete(path)
    except ValueError as err:
        log.warning("%s; predicting it again", err)
        return False
    return True


def _run_one(segmenter, job: Job, future, options, qc_dir, extras: tuple = ()) -> dict:
    """One case, isolated: any ``Exception`` (TensorFlow's ``OpError``/``ResourceExhaustedError`` are
    not ``RuntimeError``s) becomes this case's one-line error; the memory sampler stops in every path.
    ``KeyboardInterrupt`` and ``SystemExit`` are not ``Exception``s and still abort the run."""
    record = CaseReport(job.case, str(job.input), str(job.output))
    timer = StageTimer()
    t0 = time.perf_counter()
    read_seconds = None
    sampler = MemorySampler().start()  # this case's RSS and device-level GPU memory (FLARE's rules)
    try:
        volume, read_seconds = future.result()  # read in the background, overlapping the previous case
        qc_path = (qc_dir / f"{job.case}.png") if qc_dir is not None else None
        record = segment_file(segmenter, volume, job.output, options, timer, qc_path, extras)
        record.case, record.input, record.output = job.case, str(job.input), str(job.output)
        record.input_geometry = volume.geometry.to_dict()
        log.info("%s -> %s (%.2f s)", job.input.name, job.output, time.perf_counter() - t0)
    except Exception as err:  # noqa: BLE001 -- per-case isolation is the point
        message = case_error_message(job.input, err)
        record.fail(message)
        log.error("%s", message)
        log.debug("%s: traceback", job.input, exc_info=True)
    finally:
        sampler.stop()
    record.seconds = {"read": round(read_seconds, 4), **timer.as_dict()} if read_seconds is not None \
        else timer.as_dict()
    record.seconds_total = round(time.perf_counter() - t0, 4)
    record.memory = sampler.result()
    record.peak_rss_bytes = peak_rss_bytes()
    return record.to_dict()


def case_error_message(path, err: BaseException) -> str:
    """One line naming ``path`` and the cause: the informative line of a (multi-line) library message,
    prefixed with the error type when the message does not say it (``ResourceExhaustedError: …``)."""
    lines = [ln.strip() for ln in str(getattr(err, "message", None) or err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    kind = type(err).__name__
    if not isinstance(err, (ValueError, FileNotFoundError, PermissionError)) and kind not in text:
        text = f"{kind}: {text}" if text else kind
    text = text[:300]
    return text if str(path) in text else f"{path}: {text}"
