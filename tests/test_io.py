"""CT reading/writing: formats, DICOM vs NIfTI, validation errors, atomic header-exact writing."""


import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from flare_seg import io
from flare_seg.atomic import temporary_path
from flare_seg.geometry import Geometry


def _image(array, spacing_xyz=(0.8, 0.8, 2.5), origin=(1.0, 2.0, 3.0), direction=None):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_formats_read_as_zyx_with_geometry(tmp_path, suffix):
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5) - 30
    sitk.WriteImage(_image(array, direction=(0, 1, 0, -1, 0, 0, 0, 0, 1)), str(tmp_path / f"ct{suffix}"))
    volume = io.read_ct(tmp_path / f"ct{suffix}")
    np.testing.assert_array_equal(volume.array, array)
    assert volume.geometry.shape == (3, 4, 5)
    np.testing.assert_allclose(volume.geometry.spacing_mm, (2.5, 0.8, 0.8))
    np.testing.assert_allclose(volume.geometry.origin_mm, (1.0, 2.0, 3.0), atol=1e-5)
    np.testing.assert_allclose(volume.geometry.direction, (0, 1, 0, -1, 0, 0, 0, 0, 1), atol=1e-6)


def test_write_labels_is_header_exact_atomic_and_leaves_no_temporary(tmp_path):
    array = np.zeros((3, 4, 5), dtype=np.int16)
    sitk.WriteImage(_image(array, (0.7431, 0.7431, 2.53), (-12.3456789, 45.6, -789.01),
                           (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)), str(tmp_path / "case_0000.nii.gz"))
    volume = io.read_ct(tmp_path / "case_0000.nii.gz")
    labels = np.random.default_rng(0).integers(0, 5, size=(3, 4, 5)).astype(np.uint8)
    io.write_labels(labels, volume.geometry, tmp_path / "case.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "case.nii.gz"))
    reference = sitk.ReadImage(str(tmp_path / "case_0000.nii.gz"))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSpacing() == reference.GetSpacing()
    assert written.GetOrigin() == reference.GetOrigin()
    assert written.GetDirection() == reference.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz", "case_0000.nii.gz"]


def test_temporary_names_keep_suffix_and_never_look_like_inputs(tmp_path):
    for _ in range(50):
        name = temporary_path(tmp_path / "case_0000.nii.gz").name
        assert name.endswith(".nii.gz") and not name.endswith("_0000.nii.gz") and name.startswith(".")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        io.write_labels(np.zeros((2, 2, 2), np.uint8), Geometry((3, 3, 3), (1, 1, 1)), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.write_labels(np.zeros((2, 2, 2), np.uint8), Geometry((2, 2, 2), (1, 1, 1)), tmp_path / "no" / "x.nii.gz")


def test_case_names():
    assert io.case_name("a/b/FLARE21_001_0000.nii.gz") == "FLARE21_001"
    assert io.case_name("scan.nrrd") == "scan"
    assert io.case_name("folder/dicom_series") == "dicom_series"


def test_bad_inputs_give_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        io.read_ct(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.nii.gz").write_text("not an image")
    with pytest.raises(ValueError, match=r"notes\.nii\.gz: cannot read image") as err:
        io.read_ct(tmp_path / "notes.nii.gz")
    assert "\n" not in str(err.value)
    good = tmp_path / "good.nii.gz"
    sitk.WriteImage(_image(np.zeros((20, 30, 30), np.int16)), str(good))
    truncated = tmp_path / "truncated.nii.gz"
    data = good.read_bytes()
    for fraction in (0.3, 0.5, 0.9, 0.999):  # ITK alone zero-fills some truncated .nii.gz files
        truncated.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ValueError, match="truncated.nii.gz") as err:
            io.read_ct(truncated)
        assert "\n" not in str(err.value)
    plain = tmp_path / "short.nii"
    sitk.WriteImage(_image(np.zeros((20, 30, 30), np.int16)), str(plain))
    plain.write_bytes(plain.read_bytes()[:-100])
    with pytest.raises(ValueError, match="short.nii: cannot read image"):
        io.read_ct(plain)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.int16)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(ValueError, match=r"flat\.nii\.gz: is a 2-D image"):
        io.read_ct(tmp_path / "flat.nii.gz")
    frame = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(tmp_path / "four.nii.gz"))
    with pytest.raises(ValueError, match=r"four\.nii\.gz: is a 4-D image"):
        io.read_ct(tmp_path / "four.nii.gz")
    rgb = sitk.GetImageFromArray(np.zeros((3, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(ValueError, match=r"rgb\.nii\.gz: has 3 components per voxel"):
        io.read_ct(tmp_path / "rgb.nii.gz")


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    four = sitk.JoinSeries([_image(array)])
    assert four.GetDimension() == 4
    sitk.WriteImage(four, str(tmp_path / "t.nii.gz"))
    volume = io.read_ct(tmp_path / "t.nii.gz")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.geometry.spacing_mm, (2.5, 0.8, 0.8))


def test_nonfinite_replaced_with_warning_or_error(tmp_path):
    array = np.zeros((3, 4, 5), np.float32)
    array[0, 0, 0] = np.nan
    array[1, 1, 1] = np.inf
    sitk.WriteImage(_image(array), str(tmp_path / "nan.mha"))  # the NIfTI writer turns NaN into 0
    volume = io.read_ct(tmp_path / "nan.mha")
    assert volume.array[0, 0, 0] == -1024 and volume.array[1, 1, 1] == -1024
    assert any("2 non-finite voxels" in w for w in volume.warnings)
    with pytest.raises(ValueError, match=r"nan\.mha: 2 non-finite voxels"):
        io.read_ct(tmp_path / "nan.mha", nonfinite="error")


def test_unit_spacing_warns_and_can_be_substituted(tmp_path):
    sitk.WriteImage(_image(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 1.0)), str(tmp_path / "unit.nii.gz"))
    volume = io.read_ct(tmp_path / "unit.nii.gz")
    assert volume.geometry.spacing_mm == (1.0, 1.0, 1.0)
    assert any("1x1x1 mm" in w for w in volume.warnings)
    fixed = io.read_ct(tmp_path / "unit.nii.gz", unit_spacing_fix=io.FLARE_MEAN_SPACING_XYZ)
    assert fixed.geometry.spacing_mm == (2.528, 0.8145, 0.8145)


def _cropped_like(volume: io.Volume, dicom_folder):
    """``volume`` cut to the in-plane window of a bundled, cropped DICOM series (as it is if uncropped)."""
    crop_file = dicom_folder.parent / "dicom_crop.json"
    if not crop_file.exists():
        return volume.array, volume.geometry
    crop = __import__("json").loads(crop_file.read_text())
    r0, c0, n = crop["row0"], crop["col0"], crop["size"]
    g = volume.geometry
    origin = tuple(float(v) for v in g.index_to_physical((0, r0, c0)))
    return volume.array[:, r0:r0 + n, c0:c0 + n], Geometry((g.shape[0], n, n), g.spacing_mm, origin, g.direction)


def test_dicom_series_equals_its_nifti_conversion():
    folder = shared_file("upper_abdomen_slab/dicom")
    dicom = io.read_ct(folder)
    array, geometry = _cropped_like(io.read_ct(shared_file("upper_abdomen_slab/ct.nii.gz")), folder)
    np.testing.assert_array_equal(dicom.array, array)
    assert dicom.geometry.matches(geometry), dicom.geometry.mismatch(geometry)
    assert dicom.geometry.spacing_mm[0] == pytest.approx(2.0)  # positions, not SliceThickness (3 mm)
    assert io.is_dicom_folder(folder)


def test_ge_series_padding_and_spacing_tolerance():
    dicom = io.read_ct(shared_file("liver_dome_3slice/dicom"))
    nifti = io.read_ct(shared_file("liver_dome_3slice/ct.nii.gz"))
    assert dicom.geometry.matches(nifti.geometry), dicom.geometry.mismatch(nifti.geometry)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file("liver_dome_3slice/ct.nii.gz"))))
    assert raw.min() == -3024  # the GE outside-field-of-view value ...
    assert nifti.array.min() == -1024  # ... is read as air/padding
    np.testing.assert_array_equal(nifti.array, np.maximum(raw, -1024))
    np.testing.assert_array_equal(dicom.array, nifti.array)


def test_folder_with_two_series_picks_the_largest(tmp_path):
    for name, slices in (("small", 2), ("large", 4)):
        image = sitk.GetImageFromArray(np.zeros((slices, 8, 8), np.int16))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        uid = f"1.2.826.0.1.3680043.2.1125.{slices}"
        for z in range(slices):
            s = image[:, :, z]
            s.SetMetaData("0020|000e", uid)
            s.SetMetaData("0020|0032", f"0\\0\\{z * 2.0}")
            s.SetMetaData("0020|0013", str(z))
            s.SetMetaData("0008|0060", "CT")
            writer.SetFileName(str(tmp_path / f"{name}_{z}.dcm"))
            writer.Execute(s)
    volume = io.read_ct(tmp_path)
    assert volume.geometry.shape[0] == 4
    assert any("2 DICOM series" in w for w in volume.warnings)
