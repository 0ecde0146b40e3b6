"""DICOM Segmentation output with highdicom: the edge module that knows DICOM objects.

``write_dicom_seg`` turns a label map on a DICOM series' grid (what ``predict`` writes) into a
DICOM SEG instance that references the source series: one segment per organ found, SNOMED CT
codes, and the algorithm's name, version and weights sha256. Slice ``k`` of the label map is the
frame of source instance ``files[k]`` (:func:`flare_seg.io.dicom_series_files`), rows and columns
as in the source pixel data, so the frames follow the source slices' order exactly.

Source series with empty UIDs (the shared real slab has empty Study, Series and SOP Instance UIDs
and SOP Class UID) get UIDs generated for the references, deterministically from the files'
Frame of Reference and positions (a rerun gives the same UIDs), with a warning: a viewer will not
match such a SEG to the original series automatically.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg import __version__
from flare_seg.atomic import atomic_path
from flare_seg.extras import require
from flare_seg.labels import NAMES, ORGANS

log = logging.getLogger(__name__)

SEG_SUFFIX = ".seg.dcm"
#: SNOMED CT codes (value, meaning) of the FLARE organs; "Kidney" covers both kidneys (no laterality).
ORGAN_SNOMED = {1: ("10200004", "Liver"), 2: ("64033007", "Kidney"), 3: ("78961009", "Spleen"),
                4: ("15776009", "Pancreas")}
CATEGORY_SNOMED = ("91723000", "Anatomical Structure")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_UID_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID")


def seg_path(label_path: str | os.PathLike) -> Path:
    """``out/<case>.nii.gz`` -> ``out/<case>.seg.dcm``."""
    from flare_seg.io import image_suffix

    label_path = Path(label_path)
    suffix = image_suffix(label_path)
    stem = label_path.name[: -len(suffix)] if suffix else label_path.name
    return label_path.with_name(stem + SEG_SUFFIX)


def read_source_series(folder: str | os.PathLike) -> tuple[list, list[str]]:
    """The series' datasets (headers only) in slice order, with empty UIDs filled; and the warnings."""
    import pydicom

    from flare_seg.io import dicom_series_files

    files = dicom_series_files(folder)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in datasets:
        # an empty Specific Character Set (the shared GE series has one) means the default repertoire,
        # which highdicom only accepts as an absent attribute
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
            del ds.SpecificCharacterSet
    return datasets, _fill_missing_uids(datasets, Path(folder))


def _fill_missing_uids(datasets: list, folder: Path) -> list[str]:
    from pydicom.uid import generate_uid

    first = datasets[0]
    seed = [str(first.get("FrameOfReferenceUID", "")), str(first.get("StudyDate", "")), folder.name]
    generated = set()
    shared = {}
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if not str(first.get(name, "")).strip():
            shared[name] = generate_uid(entropy_srcs=seed + [name])
    for k, ds in enumerate(datasets):
        for name, uid in shared.items():
            if not str(ds.get(name, "")).strip():
                setattr(ds, name, uid)
                generated.add(name)
        if not str(ds.get("SOPInstanceUID", "")).strip():
            position = "/".join(str(v) for v in ds.get("ImagePositionPatient", [k]))
            ds.SOPInstanceUID = generate_uid(entropy_srcs=seed + ["SOPInstanceUID", str(k), position])
            generated.add("SOPInstanceUID")
        if not str(ds.get("SOPClassUID", "")).strip():
            if str(ds.get("Modality", "")) != "CT":
                raise ValueError(f"{folder}: a source slice has no SOP Class UID and is not modality CT")
            ds.SOPClassUID = CT_IMAGE_STORAGE
            generated.add("SOPClassUID")
    if not generated:
        return []
    names = ", ".join(n for n in _UID_FIELDS if n in generated)
    message = (f"{folder}: DICOM series has empty {names}; generated them for the DICOM-SEG references "
               "(a viewer will not link the SEG to the original files automatically)")
    log.warning(message)
    return [message]


@dataclass(frozen=True)
class Algorithm:
    """Who made the segmentation: written into every segment's Algorithm Identification."""

    weights_sha256: dict
    name: str = "flare-seg"
    version: str = __version__


def _segment_descriptions(organs: list[int], algorithm: Algorithm) -> list:
    import highdicom as hd
    from pydicom.sr.coding import Code

    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, version=algorithm.version, family=Code("123110", "DCM", "Artificial Intelligence"),
        source="U-Net + SCN, Thaler et al. FLARE21",  # LO: at most 64 characters
        parameters={f"weights_sha256_{k}": v for k, v in sorted(algorithm.weights_sha256.items())})
    category = Code(CATEGORY_SNOMED[0], "SCT", CATEGORY_SNOMED[1])
    return [hd.seg.SegmentDescription(
        segment_number=number, segment_label=NAMES[organ],
        segmented_property_category=category,
        segmented_property_type=Code(ORGAN_SNOMED[organ][0], "SCT", ORGAN_SNOMED[organ][1]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=identification,
        tracking_id=f"{NAMES[organ]}", tracking_uid=hd.UID()) for number, organ in enumerate(organs, start=1)]


def build_dicom_seg(source_datasets: list, labels: np.ndarray, algorithm: Algorithm, where: str = "labels"):
    """A highdicom ``Segmentation`` of ``labels`` (z = source slice, y = row, x = column) over the sources.

    One segment per organ present, numbered from 1 in label order; one frame per source slice and
    segment (empty frames kept, so every slice has its frame). Raises ``ValueError`` naming
    ``where`` if the label map does not lie on the source grid, or if no organ was found.
    """
    import highdicom as hd

    first = source_datasets[0]
    expected = (len(source_datasets), int(first.Rows), int(first.Columns))
    if tuple(labels.shape) != expected:
        raise ValueError(f"{where}: label map shape {labels.shape} is not the source series' (slices, rows, "
                         f"columns) {expected}")
    organs = [o for o in ORGANS if np.any(labels == o)]
    if not organs:
        raise ValueError(f"{where}: no organ was found; a DICOM SEG needs at least one segment")
    segment_of = np.zeros(256, dtype=np.uint8)  # organ label -> consecutive segment number
    segment_of[organs] = np.arange(1, len(organs) + 1, dtype=np.uint8)
    return hd.seg.Segmentation(
        source_images=source_datasets, pixel_array=segment_of[labels],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(organs, algorithm),
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="flare-seg", manufacturer_model_name=algorithm.name, software_versions=algorithm.version,
        device_serial_number="none", series_description="flare-seg organs (research use only)",
        content_description="Liver, kidney, spleen, pancreas", content_label="FLARE_ORGANS",
        omit_empty_frames=False)


def write_dicom_seg(source_folder: str | os.PathLike, labels: np.ndarray, path: str | os.PathLike,
                    algorithm: Algorithm) -> list[str]:
    """Write ``labels`` (on the series' grid, as ``predict`` returns it) as a DICOM SEG at ``path``.

    Written atomically; returns the warnings (generated UIDs)."""
    require("DICOM-SEG output", "hospital", "highdicom", "pydicom")
    datasets, warnings = read_source_series(source_folder)
    seg = build_dicom_seg(datasets, np.asarray(labels, dtype=np.uint8), algorithm, where=str(source_folder))
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return warnings


@dataclass(frozen=True)
class DicomSegOutput:
    """A per-case extra output of :func:`flare_seg.predict.segment_file`: ``<case>.seg.dcm``."""

    stage = "dicom_seg"

    def path_for(self, label_path: Path) -> Path:
        return seg_path(label_path)

    def __call__(self, volume, labels: np.ndarray, label_path: Path, segmenter) -> dict:
        path = self.path_for(label_path)
        if not np.any(labels):
            return {"dicom_seg": None, "warnings": [f"{volume.path}: no organ found, so no DICOM SEG written "
                                                    "(a SEG needs at least one segment)"]}
        algorithm = Algorithm(weights_sha256=dict(segmenter.provenance()["weights_sha256"]))
        warnings = write_dicom_seg(volume.path, labels, path, algorithm)
        return {"dicom_seg": str(path), "warnings": warnings}
