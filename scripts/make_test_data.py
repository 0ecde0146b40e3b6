#!/usr/bin/env python3
"""Build ``tests/data`` (the real data the tests need, small enough to ship) from ``../shared/data``.

    python scripts/make_test_data.py [--shared ../shared/data] [--out tests/data]

DICOM series are cropped in-plane to a 128 x 128 window (pixel data, stored uncompressed, Rows/Columns
and ImagePositionPatient rewritten with pydicom; every other tag, e.g. the empty UIDs and the GE
thickness/spacing quirks, kept); the liver-dome NIfTI is cropped to the same window so the two
still agree. Label maps and the chest CT are copied as they are. The upper-abdomen CT is
``examples/upper_abdomen_slab_0000.nii.gz`` (a link, no second copy). Sources and licences:
``tests/data/README.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: In-plane windows (first row, first column, size) of the cropped DICOM series.
CROPS = {"upper_abdomen_slab": (192, 64, 128), "liver_dome_3slice": (0, 192, 128)}
COPIED = ["upper_abdomen_slab/labels_flare_pseudo.nii.gz", "chest_out_of_domain/chest_above_diaphragm.nii.gz",
          "amos_label_map/labels_flare_manual.nii.gz", "amos_label_map/amos_0013_label_original.nii.gz"]
LICENCES = ["TotalSegmentator_LICENSE_Apache-2.0.txt", "dcmqi_LICENSE_BSD-3.txt", "SAM-Med3D_LICENSE_Apache-2.0.txt",
            "CC-BY-4.0_NOTICE.md"]


def crop_dicom_file(source: Path, target: Path, row0: int, col0: int, size: int) -> None:
    import pydicom

    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array[row0:row0 + size, col0:col0 + size]
    row_dir = np.array(ds.ImageOrientationPatient[:3], float)  # along a row: increasing column index
    col_dir = np.array(ds.ImageOrientationPatient[3:], float)  # down a column: increasing row index
    spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
    position = np.array(ds.ImagePositionPatient, float) + col0 * spacing_col * row_dir + row0 * spacing_row * col_dir
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # stored uncompressed (was JPEG)
    ds.save_as(target, enforce_file_format=True)


def crop_nifti(source: Path, target: Path, row0: int, col0: int, size: int) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image[col0:col0 + size, row0:row0 + size, :], str(target), useCompression=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    args = p.parse_args(argv)
    for folder, (row0, col0, size) in CROPS.items():
        (args.out / folder / "dicom").mkdir(parents=True, exist_ok=True)
        for source in sorted((args.shared / folder / "dicom").iterdir()):
            crop_dicom_file(source, args.out / folder / "dicom" / source.name, row0, col0, size)
        crop = {"row0": row0, "col0": col0, "size": size, "of": f"{folder}/ct.nii.gz in ../shared/data"}
        (args.out / folder / "dicom_crop.json").write_text(json.dumps(crop, indent=2) + "\n")
    crop_nifti(args.shared / "liver_dome_3slice" / "ct.nii.gz", args.out / "liver_dome_3slice" / "ct.nii.gz",
               *CROPS["liver_dome_3slice"])
    for relative in COPIED:
        (args.out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.shared / relative, args.out / relative)
    link = args.out / "upper_abdomen_slab" / "ct.nii.gz"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("../../../examples/upper_abdomen_slab_0000.nii.gz"))
    (args.out / "LICENSES").mkdir(exist_ok=True)
    for name in LICENCES:
        shutil.copyfile(args.shared / "LICENSES" / name, args.out / "LICENSES" / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
