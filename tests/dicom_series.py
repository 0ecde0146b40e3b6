"""Write a small CT DICOM series with pydicom (tests build their own, so a fresh clone needs no shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_ct_series(folder: Path, ct_zyx: np.ndarray, spacing_mm_zyx, origin_mm_xyz=(-100.0, -80.0, -300.0),
                    rng: np.random.Generator | None = None, empty_uids: bool = False) -> list[Path]:
    """One uncompressed CT Image Storage file per slice; slice ``k`` lies at ``origin + k * dz`` along z.

    The file names are shuffled (with ``rng``) so the reader must sort by position, not by name.
    ``empty_uids`` leaves Study/Series/SOP Instance UIDs and SOP Class UID empty, like the shared slab.
    Returns the files in slice order.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = rng or np.random.default_rng(0)
    names = rng.permutation(len(ct_zyx))
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k, plane in enumerate(ct_zyx):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _slice_dataset(plane, k, spacing_mm_zyx, origin_mm_xyz)
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = ("", "") if empty_uids else (CTImageStorage, sop)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ("", "") if empty_uids else (study, series)
        ds.FrameOfReferenceUID = frame
        path = folder / f"IM{names[k]:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _slice_dataset(plane: np.ndarray, k: int, spacing_mm_zyx, origin_mm_xyz):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PH0001", "", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
    ds.Manufacturer = "phantom"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(origin_mm_xyz[0]), float(origin_mm_xyz[1]),
                               float(origin_mm_xyz[2]) + k * float(spacing_mm_zyx[0])]
    ds.PixelSpacing = [float(spacing_mm_zyx[1]), float(spacing_mm_zyx[2])]  # row spacing (y), column spacing (x)
    ds.SliceThickness = float(spacing_mm_zyx[0])
    ds.Rows, ds.Columns = plane.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.PixelData = np.ascontiguousarray(plane, dtype="<i2").tobytes()
    return ds
