"""Reading faults: multi-member gzip, truncation, single-precision oblique NIfTI headers, one-line causes."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import SimpleITK as sitk

from flare_seg import io
from flare_seg.geometry import Geometry, rotation_direction


def _nifti_bytes(array: np.ndarray, geometry: Geometry, tmp_path) -> bytes:
    path = tmp_path / "plain.nii"
    io.write_image(array, geometry, path, compress=False)
    return path.read_bytes()


def _multi_member_gzip(data: bytes, members: int) -> bytes:
    step = len(data) // members + 1
    return b"".join(gzip.compress(data[i:i + step]) for i in range(0, len(data), step))


def test_multi_member_gzip_reads_and_a_truncated_one_is_refused(tmp_path):
    array = np.arange(6 * 10 * 12, dtype=np.int16).reshape(6, 10, 12)
    geometry = Geometry(array.shape, (2.5, 0.8, 0.9), (1.0, 2.0, 3.0))
    raw = _nifti_bytes(array, geometry, tmp_path)
    multi = _multi_member_gzip(raw, 3)
    last_isize = struct.unpack("<I", multi[-4:])[0]
    assert last_isize != len(raw)  # what the old check compared: it refused this valid file
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(multi)
    volume = io.read_ct(path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.geometry.matches(geometry)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(multi[: len(multi) - len(multi) // 5])
    with pytest.raises(ValueError, match=r"truncated.nii.gz: cannot read image \(.*(truncated|corrupted)"):
        io.read_ct(truncated)
    # a file cut at a member boundary is complete gzip but short of what the header promises
    first_two = _multi_member_gzip(raw, 3)
    boundary = len(gzip.compress(raw[: len(raw) // 3 + 1]))
    (tmp_path / "cut.nii.gz").write_bytes(first_two[:boundary])
    with pytest.raises(ValueError, match="file is truncated: its header promises"):
        io.read_ct(tmp_path / "cut.nii.gz")


def _single_precision_oblique_nifti(tmp_path, array, geometry, perturbation: float):
    """A NIfTI as some converters write them: no qform (code 0), an oblique float32 sform whose
    direction cosines are off orthonormal by ``perturbation`` (ITK 5.4 refuses above 1e-4)."""
    header = bytearray(_nifti_bytes(array, geometry, tmp_path))
    srows = np.array(struct.unpack("<12f", header[280:328]), dtype=np.float64).reshape(3, 4)
    srows[0, 1] += perturbation * np.linalg.norm(srows[:, 1])
    header[280:328] = struct.pack("<12f", *srows.ravel().astype(np.float32))
    header[252:254] = struct.pack("<h", 0)  # qform_code: unknown
    header[254:256] = struct.pack("<h", 1)  # sform_code: scanner
    path = tmp_path / "oblique.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))
    return path


def test_nifti_orthonormal_only_to_single_precision_is_read_with_a_warning(tmp_path):
    array = np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)
    geometry = Geometry(array.shape, (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), rotation_direction((0.2, -0.15, 0.3)))
    path = _single_precision_oblique_nifti(tmp_path, array, geometry, 3e-4)
    with pytest.raises(RuntimeError, match="orthonormal direction cosines"):
        sitk.ReadImage(str(path))  # the fault: SimpleITK alone refuses this file
    volume = io.read_ct(path)
    np.testing.assert_array_equal(volume.array, array)
    direction = volume.geometry.direction_matrix
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(direction, geometry.direction_matrix, atol=5e-4)
    np.testing.assert_allclose(volume.geometry.spacing_mm, geometry.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(volume.geometry.origin_mm, geometry.origin_mm, atol=1e-4)
    assert len(volume.warnings) == 1 and "orthonormal only to" in volume.warnings[0]
    # the labels written for it lie on the same grid and read back with plain SimpleITK
    io.write_labels(np.zeros(array.shape, np.uint8), volume.geometry, tmp_path / "labels.nii.gz")
    assert io.read_image(tmp_path / "labels.nii.gz")[1].matches(volume.geometry)


def test_a_real_shear_is_still_refused_with_its_reason(tmp_path):
    array = np.zeros((4, 5, 6), np.int16)
    geometry = Geometry(array.shape, (2.0, 1.0, 1.0), direction=rotation_direction((0.1, 0.2, 0.3)))
    path = _single_precision_oblique_nifti(tmp_path, array, geometry, 0.05)
    with pytest.raises(ValueError, match=r"oblique.nii.gz: cannot read image \(its sform direction cosines are "
                                         r".* from orthonormal"):
        io.read_ct(path)


def test_one_line_errors_carry_the_cause_not_the_source_location(tmp_path):
    bad = tmp_path / "noendian.nrrd"
    bad.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\ndata file: x.raw\n\n")
    with pytest.raises(ValueError) as info:
        io.read_ct(bad)
    message = str(info.value)
    assert "\n" not in message and ".cxx" not in message and "Exception thrown" not in message
    assert message.startswith(f"{bad}: cannot read image (") and "require endian info" in message
    itk = RuntimeError("Exception thrown in SimpleITK ImageFileReader_Execute: /x/itkNiftiImageIO.cxx:2135:\n"
                       "ITK ERROR: ITK only supports orthonormal direction cosines.  No orthonormal definition found!")
    assert io._one_line(itk) == "ITK only supports orthonormal direction cosines.  No orthonormal definition found!"


def test_corrupt_gzip_stream_is_a_one_line_error(tmp_path):
    array = np.zeros((4, 5, 6), np.int16)
    raw = _nifti_bytes(array, Geometry(array.shape, (1.0, 1.0, 2.0)), tmp_path)
    data = bytearray(gzip.compress(raw))
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    path = tmp_path / "garbled.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="garbled.nii.gz: cannot read image") as info:
        io.read_ct(path)
    assert "\n" not in str(info.value)
