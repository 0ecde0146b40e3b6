"""Reading CT volumes and writing label maps: the one module that knows SimpleITK.

SimpleITK sizes, spacings and indices are ``(x, y, z)``; every array this module returns or takes
is ``(z, y, x)`` and every :class:`~flare_seg.geometry.Geometry` follows the conventions of
:mod:`flare_seg.geometry`. The conversion happens here and nowhere else.

Decisions (documented in ``docs/architecture.md``):

* Non-finite voxels (NaN/inf, found in some resampled exports) are replaced by -1024 HU with a
  warning by default; ``nonfinite="error"`` makes them an error instead.
* A header claiming exactly 1 x 1 x 1 mm is suspicious in abdominal CT (FLARE21 has such files
  whose true spacing differs); it gives a warning, and ``unit_spacing_fix`` substitutes a spacing
  (the paper's code used the FLARE mean 0.8145 x 0.8145 x 2.528 mm).
* Values below -1024 HU (scanner padding, e.g. GE's -3024 outside the field of view) are set to
  -1024 HU, the value the paper pads with, so "outside the scan" looks like air to the networks.
* Outputs are written atomically: a temporary file in the same folder whose name ends in the
  output's suffix (SimpleITK picks the writer by suffix) but never in ``_0000.nii.gz``, then a rename.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flare_seg.atomic import atomic_path
from flare_seg.geometry import Geometry
from flare_seg.naming import IMAGE_SUFFIXES, case_name, image_suffix  # noqa: F401 (public here too)
from flare_seg.preprocess import clamp_padding

log = logging.getLogger(__name__)

#: The FLARE21 mean spacing (x, y, z) the paper's code substitutes for fake 1 x 1 x 1 mm headers.
FLARE_MEAN_SPACING_XYZ = (0.8145, 0.8145, 2.528)
PAD_HU = -1024.0


@dataclass
class Volume:
    """A CT volume: ``array`` is ``(z, y, x)`` in HU, ``geometry`` where it lies, ``warnings`` what was odd."""

    array: np.ndarray
    geometry: Geometry
    path: str = ""
    pixel_type: str = ""
    warnings: list[str] = field(default_factory=list)


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder holding at least one DICOM series."""
    path = Path(path)
    return path.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _geometry_of(image: sitk.Image) -> Geometry:
    return Geometry(
        shape=tuple(int(n) for n in reversed(image.GetSize())),
        spacing_mm=tuple(float(s) for s in reversed(image.GetSpacing())),
        origin_mm=tuple(float(v) for v in image.GetOrigin()),
        direction=tuple(float(v) for v in image.GetDirection()),
    )


def _one_line(err: Exception) -> str:
    """The cause in a (multi-line) ITK error, on one line: not the ``Exception thrown in …: file.cxx:N:``
    location line, but the ``ERROR:`` text, completed by the deepest line when that text ends in ':'."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    body = [ln for ln in lines if not ln.startswith("Exception thrown in")]
    if not body:
        return (lines[0] if lines else type(err).__name__)[:300]
    match = re.search(r"ERROR:\s*(?:\w+\(0x[0-9a-fA-F]+\):\s*)?(.*)", body[0])
    text = match.group(1) if match else body[0]
    if len(body) > 1 and text.endswith(":"):
        deepest = re.sub(r"^\[\w+\]\s*\w+:\s*", "", body[-1])
        text = f"{text.rstrip(':').rstrip()}: {deepest}"
    return (text or body[0])[:300]


def dicom_series_files(folder: str | os.PathLike, warnings: list[str] | None = None) -> list[str]:
    """The files of the DICOM series read from ``folder`` (the largest one), in slice order.

    Slice ``k`` of the array :func:`read_ct` returns is ``files[k]`` (rows = y, columns = x), which
    is how DICOM-SEG output finds the source instance of each label slice.
    """
    folder = Path(folder)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"{folder}: folder holds no DICOM series")
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    chosen = max(files, key=lambda sid: len(files[sid]))
    if len(series) > 1 and warnings is not None:
        msg = (f"{folder}: {len(series)} DICOM series found; using the largest "
               f"({len(files[chosen])} files, series {chosen or '<empty UID>'})")
        warnings.append(msg)
        log.warning(msg)
    return list(files[chosen])


def _read_dicom_series(folder: Path, warnings: list[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(folder, warnings))
    return reader.Execute()


def _nifti_expected_bytes(header: bytes) -> int | None:
    """Bytes of a NIfTI-1 file implied by its header (voxel offset + voxel data), or None if unknown."""
    import struct

    for endian in ("<", ">"):
        if struct.unpack(f"{endian}i", header[:4])[0] == 348:
            dims = struct.unpack(f"{endian}8h", header[40:56])
            bitpix = struct.unpack(f"{endian}h", header[72:74])[0]
            vox_offset = struct.unpack(f"{endian}f", header[108:112])[0]
            count = int(np.prod([max(int(d), 1) for d in dims[1 : 1 + max(min(int(dims[0]), 7), 0)]]))
            return int(vox_offset) + count * max(int(bitpix), 8) // 8
    return None


def check_nifti_complete(path: Path) -> None:
    """Raise ``ValueError`` if a NIfTI-1 file holds fewer bytes than its header promises.

    ITK's NIfTI reader can return a truncated ``.nii.gz`` zero-filled instead of failing. The gzip
    trailer's ISIZE (uncompressed size mod 2**32) settles a single-member file at once; a file whose
    last ISIZE differs may be a valid multi-member gzip (some tools write them), so it is then
    decompressed once, counting bytes, which a truncated file cannot complete.
    """
    import gzip
    import struct

    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            with gzip.open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(348))
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", fh.read(4))[0]
            complete = expected is None or isize == expected % 2**32 or _gzip_holds(path, expected)
        elif name.endswith(".nii"):
            with open(path, "rb") as fh:
                expected = _nifti_expected_bytes(fh.read(348))
            complete = expected is None or path.stat().st_size >= expected
        else:
            return
    except (OSError, EOFError, struct.error, zlib.error) as err:
        raise ValueError(f"{path}: cannot read image (corrupted file: {err})") from None
    if not complete:
        raise ValueError(f"{path}: cannot read image (file is truncated: its header promises {expected} bytes)")


def _gzip_holds(path: Path, expected_bytes: int) -> bool:
    """Whether the (possibly multi-member) gzip ``path`` decompresses to at least ``expected_bytes``."""
    import gzip

    count = 0
    try:
        with gzip.open(path, "rb") as fh:
            while count < expected_bytes:
                chunk = fh.read(1 << 22)
                if not chunk:
                    break
                count += len(chunk)
    except EOFError:  # "Compressed file ended before the end-of-stream marker was reached"
        return False
    return count >= expected_bytes


def _read_sitk(path: Path, warnings: list[str]) -> sitk.Image:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        if path.is_dir():
            return _read_dicom_series(path, warnings)
        check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        if "orthonormal direction cosines" in str(err) and path.name.lower().endswith((".nii", ".nii.gz")):
            return _read_nearly_orthonormal_nifti(path, warnings)
        raise ValueError(f"{path}: cannot read image ({_one_line(err)})") from None


#: Largest |R^T R - I| of a NIfTI sform's direction cosines that is re-orthonormalised on reading
#: (ITK 5.4 refuses above 1e-4 when the file has no qform). 1e-3 moves a point 250 mm from the
#: origin by at most about 0.25 mm; larger skews are refused as real shears.
SFORM_ORTHONORMAL_TOL = 1e-3
_PERMISSIVE_READ = threading.Lock()


def nifti_sform(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The sform ``(3x4 RAS matrix, pixdim[1:4])`` of a NIfTI-1 header."""
    import gzip
    import struct

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        header = fh.read(348)
    endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
    pixdim = np.array(struct.unpack(f"{endian}8f", header[76:108])[1:4], dtype=np.float64)
    srows = np.array(struct.unpack(f"{endian}12f", header[280:328]), dtype=np.float64).reshape(3, 4)
    return srows, pixdim


def orthonormalised_direction(matrix: np.ndarray) -> tuple[np.ndarray, float]:
    """The rotation nearest to ``matrix``'s normalised columns (polar decomposition) and how far the
    columns were from orthonormal (max |R^T R - I|)."""
    columns = matrix / np.linalg.norm(matrix, axis=0)
    deviation = float(np.max(np.abs(columns.T @ columns - np.eye(3))))
    u, _, vt = np.linalg.svd(columns)
    return u @ vt, deviation


def _read_nearly_orthonormal_nifti(path: Path, warnings: list[str]) -> sitk.Image:
    """A NIfTI whose sform is orthonormal only to single precision (and that has no qform): read the
    voxels with ITK's permissive sform mode, then set the nearest orthonormal direction, with a warning."""
    srows, pixdim = nifti_sform(path)
    rotation_ras, deviation = orthonormalised_direction(srows[:, :3])
    if deviation > SFORM_ORTHONORMAL_TOL:
        raise ValueError(f"{path}: cannot read image (its sform direction cosines are {deviation:.1e} from "
                         f"orthonormal, more than {SFORM_ORTHONORMAL_TOL:g}, and it has no qform)")
    with _PERMISSIVE_READ:
        os.environ["ITK_NIFTI_SFORM_PERMISSIVE"] = "1"
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise ValueError(f"{path}: cannot read image ({_one_line(err)})") from None
        finally:
            os.environ.pop("ITK_NIFTI_SFORM_PERMISSIVE", None)
    if image.GetDimension() == 3:  # other dimensions are refused later, with their own message
        ras_to_lps = np.diag([-1.0, -1.0, 1.0])
        image.SetDirection(tuple(float(v) for v in (ras_to_lps @ rotation_ras).ravel()))
        image.SetOrigin(tuple(float(v) for v in ras_to_lps @ srows[:, 3]))
        if np.all(pixdim > 0):
            image.SetSpacing(tuple(float(v) for v in pixdim))
    msg = (f"{path}: sform direction cosines are orthonormal only to {deviation:.1e} (no qform), which ITK "
           "refuses; read with the nearest orthonormal direction")
    warnings.append(msg)
    log.warning(msg)
    return image


def _as_3d(image: sitk.Image, path: Path) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
            "(vector/RGB image); a CT has one"
        )
    dim = image.GetDimension()
    if dim == 3:
        return image
    if dim == 4 and image.GetSize()[3] == 1:
        return sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    raise ValueError(f"{path}: is a {dim}-D image of size {image.GetSize()}; a 3-D volume is needed")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry, list[str]]:
    """Read any 3-D scalar image (NIfTI, NRRD, MHA/MHD, DICOM folder) as ``(array zyx, geometry, warnings)``."""
    path = Path(path)
    warnings: list[str] = []
    image = _as_3d(_read_sitk(path, warnings), path)
    geometry = _geometry_of(image)
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot read voxel data ({_one_line(err)})") from None
    return array, geometry, warnings


def _fix_nonfinite(array: np.ndarray, path: Path, mode: str, warnings: list[str]) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.floating):
        return array
    bad = ~np.isfinite(array)
    count = int(bad.sum())
    if not count:
        return array
    if mode == "error":
        raise ValueError(f"{path}: {count} non-finite voxels (NaN/inf)")
    array[bad] = PAD_HU
    msg = f"{path}: {count} non-finite voxels (NaN/inf) replaced by {PAD_HU:g} HU"
    warnings.append(msg)
    log.warning(msg)
    return array


def _check_unit_spacing(geometry: Geometry, path: Path, fix_xyz, warnings: list[str]) -> Geometry:
    if not np.allclose(geometry.spacing_mm, 1.0, rtol=0, atol=1e-9):
        return geometry
    if fix_xyz is None:
        msg = (f"{path}: header claims exactly 1x1x1 mm spacing, which is often wrong in abdominal CT; "
               "pass a spacing fix (e.g. the FLARE mean 0.8145,0.8145,2.528) if it is")
    else:
        msg = f"{path}: header claims exactly 1x1x1 mm spacing; using {tuple(fix_xyz)} mm (x, y, z) instead"
        geometry = Geometry(geometry.shape, tuple(float(s) for s in reversed(fix_xyz)),
                            geometry.origin_mm, geometry.direction)
    warnings.append(msg)
    log.warning(msg)
    return geometry


def read_ct(
    path: str | os.PathLike,
    *,
    nonfinite: str = "replace",
    unit_spacing_fix: tuple[float, float, float] | None = None,
) -> Volume:
    """Read a CT volume in HU with validation; errors are one-line ``ValueError``s naming the file.

    ``nonfinite``: ``"replace"`` (NaN/inf -> -1024 HU, with a warning) or ``"error"``.
    ``unit_spacing_fix``: spacing ``(x, y, z)`` in mm to use when the header claims 1 x 1 x 1 mm.
    """
    if nonfinite not in ("replace", "error"):
        raise ValueError(f"nonfinite must be 'replace' or 'error', got {nonfinite!r}")
    path = Path(path)
    array, geometry, warnings = read_image(path)
    pixel_type = str(array.dtype)
    if array.size == 0:
        raise ValueError(f"{path}: image has no voxels (size {geometry.shape[::-1]})")
    array = clamp_padding(_fix_nonfinite(array, path, nonfinite, warnings), PAD_HU)
    geometry = _check_unit_spacing(geometry, path, unit_spacing_fix, warnings)
    return Volume(array=array, geometry=geometry, path=str(path), pixel_type=pixel_type, warnings=warnings)


def _to_sitk(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(reversed(geometry.spacing_mm)))
    image.SetOrigin(tuple(geometry.origin_mm))
    image.SetDirection(tuple(geometry.direction))
    return image


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike, compress: bool = True) -> None:
    """Write ``array`` (``(z, y, x)``) with ``geometry`` atomically (temporary file, then rename)."""
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(_to_sitk(array, geometry), str(tmp), useCompression=compress, compressionLevel=1)
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot write image ({_one_line(err)})") from None


def write_labels(labels: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a uint8 label map on ``geometry``'s grid (the input's, with its exact header) atomically.

    Setting spacing, origin and direction from the input's :class:`Geometry` (exact floats from its
    header) is what ``CopyInformation`` from the input image does, without keeping the image.
    """
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"{path}: label values {labels.min()}..{labels.max()} do not fit uint8")
        labels = labels.astype(np.uint8)
    write_image(labels, geometry, path)


def ensure_writable_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that a file can be written there (before any work)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".flare-seg-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"{folder}: output folder is not writable ({err.strerror or err})") from None
    return folder
