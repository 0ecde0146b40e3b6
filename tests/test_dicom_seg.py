"""DICOM-SEG output: written from a DICOM series input, read back with highdicom, equal to the NIfTI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, shared_file, tiny_configs
from dicom_series import write_ct_series
from oracle import oracle_segmenter

pytest.importorskip("highdicom")

from flare_seg import io  # noqa: E402
from flare_seg.cli.main import main as cli  # noqa: E402
from flare_seg.dicom_seg import ORGAN_SNOMED, DicomSegOutput, read_source_series  # noqa: E402
from flare_seg.predict import plan_jobs, run_jobs  # noqa: E402

SPACING_MM = (5.0, 3.5, 3.5)


def _phantom_series(folder: Path, empty_uids=False):
    from flare_seg.synth import phantom

    ct, labels = phantom.make_phantom(np.random.default_rng(3), shape_zyx=(40, 80, 80), spacing_mm=SPACING_MM)
    write_ct_series(folder, ct, SPACING_MM, rng=np.random.default_rng(4), empty_uids=empty_uids)
    return labels


def _run_oracle(series: Path, labels_zyx: np.ndarray, out: Path) -> dict:
    """The oracle networks answer with ``labels_zyx`` (given on the series' grid as read)."""
    volume = io.read_ct(series)
    loc_config, seg_config = tiny_configs()
    segmenter = oracle_segmenter(labels_zyx, volume.geometry, loc_config, seg_config)
    jobs = plan_jobs(series, out)
    out.mkdir()
    (record,) = run_jobs(segmenter, jobs, extras=(DicomSegOutput(),), progress=False)
    assert record["status"] == "ok", record.get("error")
    return record


def _read_back(seg_file: Path, series: Path) -> tuple[np.ndarray, object]:
    """The SEG as a label map (slice k = source slice k of the series, in the reader's order)."""
    import highdicom as hd

    seg = hd.seg.segread(seg_file)
    sources, _ = read_source_series(series)  # same UIDs as when written (generated ones are deterministic)
    uids = [ds.SOPInstanceUID for ds in sources]
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    masks = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers)
    organ_of = {int(s.SegmentNumber): _organ(s) for s in seg.SegmentSequence}
    labels = np.zeros(masks.shape[:3], dtype=np.uint8)
    for j, number in enumerate(numbers):
        assert not np.any(labels[masks[..., j] > 0]), "segments overlap"
        labels[masks[..., j] > 0] = organ_of[number]
    return labels, seg


def _organ(segment) -> int:
    code = segment.SegmentedPropertyTypeCodeSequence[0]
    assert code.CodingSchemeDesignator == "SCT"
    return next(organ for organ, (value, _) in ORGAN_SNOMED.items() if value == code.CodeValue)


def _check_seg_against_nifti(record: dict, series: Path) -> object:
    nifti, _, _ = io.read_image(record["output"])
    labels, seg = _read_back(Path(record["dicom_seg"]), series)
    assert seg.Modality == "SEG"
    sources, _ = read_source_series(series)
    assert int(seg.NumberOfFrames) == len(sources) * len(seg.SegmentSequence)  # every slice, every segment
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    np.testing.assert_array_equal(labels, nifti)  # voxel for voxel, in the source slices' order
    found = sorted(_organ(s) for s in seg.SegmentSequence)
    assert found == sorted(int(v) for v in np.unique(nifti) if v)
    _check_frames(seg, sources, nifti)
    return seg


def _check_frames(seg, sources: list, nifti: np.ndarray) -> None:
    """Frame by frame: it references one source slice, lies at its position, and holds that NIfTI slice's mask.

    (highdicom orders the frames spatially along the slice normal; the references say which is which.)
    """
    index_of = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    organ_of = {int(s.SegmentNumber): _organ(s) for s in seg.SegmentSequence}
    pixels = seg.pixel_array
    shared = seg.SharedFunctionalGroupsSequence[0]
    seen = set()
    for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        (source,) = group.DerivationImageSequence[0].SourceImageSequence
        k = index_of[source.ReferencedSOPInstanceUID]
        np.testing.assert_allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in sources[k].ImagePositionPatient], atol=1e-3)
        identification = group if "SegmentIdentificationSequence" in group else shared  # one segment: shared
        organ = organ_of[int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        np.testing.assert_array_equal(pixels[i] > 0, nifti[k] == organ)
        seen.add((k, organ))
    assert len(seen) == len(sources) * len(organ_of)


def test_dicom_seg_of_a_phantom_series_equals_the_nifti_voxel_for_voxel(tmp_path):
    labels = _phantom_series(tmp_path / "series")
    record = _run_oracle(tmp_path / "series", labels, tmp_path / "out")
    assert record["dicom_seg"] == str(tmp_path / "out" / "series.seg.dcm")
    assert "dicom_seg" in record["seconds"]
    seg = _check_seg_against_nifti(record, tmp_path / "series")
    assert sorted(_organ(s) for s in seg.SegmentSequence) == [1, 2, 3, 4]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "flare-seg" and "weights_sha256_seg" in algorithm.AlgorithmParameters


def test_series_with_empty_uids_gets_generated_ones_with_a_warning(tmp_path):
    labels = _phantom_series(tmp_path / "series", empty_uids=True)
    record = _run_oracle(tmp_path / "series", labels, tmp_path / "out")
    assert any("generated them" in w and "StudyInstanceUID" in w for w in record["warnings"])
    seg = _check_seg_against_nifti(record, tmp_path / "series")
    assert seg.StudyInstanceUID and seg.ReferencedSeriesSequence[0].SeriesInstanceUID


def test_dicom_seg_with_non_dicom_input_is_a_clear_error(tmp_path, capsys):
    from flare_seg.geometry import Geometry

    io.write_image(np.zeros((4, 8, 8), np.int16), Geometry((4, 8, 8), (2.0, 1.0, 1.0)), tmp_path / "ct.nii.gz")
    assert cli(["predict", "-i", str(tmp_path / "ct.nii.gz"), "-o", str(tmp_path / "out"), "--dicom-seg"]) == 2
    errors = capsys.readouterr().err
    assert "--dicom-seg needs DICOM series input" in errors and "ct.nii.gz" in errors


@pytest.mark.parametrize("case, labels_name", [("upper_abdomen_slab", "labels_flare_pseudo.nii.gz"),
                                                ("liver_dome_3slice", "labels_flare_liver_only.nii.gz")])
def test_dicom_seg_on_the_shared_real_series(tmp_path, case, labels_name):
    # the full series where ../shared has it and its labels; else the bundled in-plane crop
    full = SHARED_DATA / case
    series = full / "dicom" if (full / labels_name).exists() else shared_file(f"{case}/dicom")
    labels, geometry, _ = io.read_image(full / labels_name if series.parent == full
                                        else shared_file(f"{case}/{labels_name}"))
    crop = series.parent / "dicom_crop.json"  # the bundled series are in-plane crops of the shared ones
    if crop.exists() and geometry.shape != io.read_ct(series).geometry.shape:
        window = json.loads(crop.read_text())
        rows, cols = (slice(window[k], window[k] + window["size"]) for k in ("row0", "col0"))
        labels = np.ascontiguousarray(labels[:, rows, cols])
    assert labels.shape == io.read_ct(series).geometry.shape
    if not labels.any():
        pytest.skip(f"{series}: the bundled crop holds none of the labelled organ")
    # the writer on its own (the oracle's 6 mm localizer finds nothing in 3 slices of 1 mm)
    volume = io.read_ct(series)
    (tmp_path / "out").mkdir()
    record = {"output": str(tmp_path / "out" / "case.nii.gz")}
    io.write_labels(labels, volume.geometry, record["output"])
    segmenter = oracle_segmenter(labels, volume.geometry, *tiny_configs())
    record.update(DicomSegOutput()(volume, labels.astype(np.uint8), Path(record["output"]), segmenter))
    _check_seg_against_nifti(record, series)
    if case == "upper_abdomen_slab":
        assert any("empty StudyInstanceUID" in w for w in record["warnings"])
