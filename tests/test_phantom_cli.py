"""``flare-seg phantom``: files in FLARE layout, any direction, anatomy kept in place, HU table."""

import numpy as np
import pytest

from flare_seg import io
from flare_seg.cli.main import main as cli
from flare_seg.geometry import to_canonical


@pytest.mark.parametrize("direction", ["identity", "ras", "permuted", "oblique"])
def test_phantom_cli_writes_flare_layout_in_any_direction(tmp_path, direction, capsys):
    code = cli(["phantom", "-o", str(tmp_path), "-n", "1", "--seed", "4", "--shape", "24,48,48",
                "--spacing", "8,8,8", "--direction", direction])
    assert code == 0
    image = tmp_path / "imagesTr" / "phantom_000_0000.nii.gz"
    labels_path = tmp_path / "labelsTr" / "phantom_000.nii.gz"
    volume = io.read_ct(image)
    labels, label_geometry, _ = io.read_image(labels_path)
    assert label_geometry.matches(volume.geometry)
    canon_labels, canon_geometry, _ = to_canonical(labels, label_geometry)
    assert canon_labels.shape == (24, 48, 48) and canon_geometry.spacing_mm == (8.0, 8.0, 8.0)
    liver = np.argwhere(canon_labels == 1).mean(axis=0)
    spleen = np.argwhere(canon_labels == 3).mean(axis=0)
    assert liver[2] < spleen[2]  # the liver stays on the patient's right whatever the header
    assert "real slab" in capsys.readouterr().out


def test_phantom_cli_label_map_mode_and_qc(tmp_path):
    code = cli(["phantom", "-o", str(tmp_path), "--mode", "labelmap", "--layout", "flat", "--qc"])
    assert code == 0
    labels, geometry, _ = io.read_image(tmp_path / "phantom_000.nii.gz")
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4} and geometry.shape == (82, 512, 512)
    assert (tmp_path / "phantom_000_qc.png").stat().st_size > 1000
