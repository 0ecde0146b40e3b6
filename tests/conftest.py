"""Shared fixtures: tiny model configurations and weights, the real test data (bundled or shared)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As flare_seg.runtime does before TensorFlow starts: the in-process tests then compute with the same
# kernels as the CLI subprocesses they are compared with (oneDNN is off by default on AMD CPUs).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

#: Real data shipped with the tests (cropped where large; sources and licences in its README.md).
BUNDLED_DATA = Path(__file__).resolve().parent / "data"
#: The project's shared data folder, used only for what is not bundled.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def blob_case(i: int, hu=(100, 180, 60, 40), organs: bool = True):
    """A 40x48x48 body at 4 mm with the four organs as balls of HU ``hu`` shifted ``i`` slices (none
    when not ``organs``): the tiny training case of the methods' tests."""
    from flare_seg.training.data import TrainCase

    z, y, x = np.mgrid[:40, :48, :48]
    image = np.full((40, 48, 48), -1000, np.int16)
    labels = np.zeros((40, 48, 48), np.uint8)
    image[((y - 24) / 20) ** 2 + ((x - 24) / 20) ** 2 < 1] = 0
    for label, ((cz, cy, cx, r), value) in enumerate(zip([(20, 20, 15, 7), (14, 30, 34, 4), (24, 28, 36, 5),
                                                          (18, 18, 28, 3)], hu, strict=True), 1):
        mask = (z - cz - i) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < r * r
        if organs:
            labels[mask], image[mask] = label, value
    return TrainCase(f"blob{i}" if organs else f"empty{i}", image, labels, (4.0, 4.0, 4.0))


def write_dataset(folder: Path, cases):
    """``cases`` as a FLARE-named data folder (``<case>_0000.nii.gz`` + ``<case>.nii.gz``); returns the
    last case's geometry (all the blob cases share it)."""
    from flare_seg.geometry import Geometry
    from flare_seg.io import write_image, write_labels

    folder.mkdir()
    for case in cases:
        geometry = Geometry(case.image_hu.shape, case.spacing_mm)
        write_image(case.image_hu, geometry, folder / f"{case.case_id}_0000.nii.gz")
        write_labels(case.labels, geometry, folder / f"{case.case_id}.nii.gz")
    return geometry


def train_tiny_segmenter_cli(tmp_path: Path, data: Path, *flags: str) -> Path:
    """Train a tiny segmenter (4 mm grid) on ``data`` through ``flare-seg train`` for 2 steps with
    ``flags``, resume it to step 4 with no flags; returns the run folder."""
    import json

    from flare_seg.cli.main import main as cli
    from flare_seg.config import replace, save_config

    _, seg = tiny_configs()
    save_config(replace(seg, preprocess=replace(seg.preprocess, grid=replace(seg.preprocess.grid, spacing_mm=4.0))),
                tmp_path / "seg.json")
    run = tmp_path / "run"
    common = ["train", "--net", "seg", "--out", str(run), "--no-carbon", "--no-progress", "--checkpoint-every", "2",
              "--validate-every", "2"]
    assert cli(common + ["--data", str(data), "--val-data", str(data), "--config", str(tmp_path / "seg.json"),
                         "--steps", "2", "--train-size", "32,32,32", *flags]) == 0
    assert cli(common + ["--resume", "--steps", "4"]) == 0
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4
    return run


def everything_is_foreground(folder: Path) -> None:
    """Make a random localizer (``folder``) call every voxel foreground, so the segmenter always runs."""
    from flare_seg.config import load_config
    from flare_seg.models import build_model

    model = build_model(load_config(folder / "config.json"))
    model.load_weights(folder / "model.weights.h5")
    logits = model.get_layer("loc_logits")
    kernel, _ = logits.get_weights()
    logits.set_weights([np.zeros_like(kernel), np.array([-10.0, 10.0], "float32")])
    model.save_weights(folder / "model.weights.h5")
    (folder / "model.weights.h5.sha256").unlink()


def shared_file(relative: str) -> Path:
    """A real-data file: from ``tests/data`` (bundled), else ``../shared/data``, else skip with the reason."""
    for root in (BUNDLED_DATA, SHARED_DATA):
        path = root / relative
        if path.exists():
            return path
    pytest.skip(f"real test data not available: {relative} is neither in {BUNDLED_DATA} nor in {SHARED_DATA}")


def tiny_configs():
    """Small localizer/SCN configs (same structure, few filters, coarse grids) for fast tests."""
    from flare_seg.config import (
        GridConfig,
        LocalizerConfig,
        LocPreprocessConfig,
        NetworkConfig,
        SegmenterConfig,
        SegPreprocessConfig,
    )

    loc = LocalizerConfig(network=NetworkConfig(levels=3, filters=4),
                          preprocess=LocPreprocessConfig(grid=GridConfig(12.0, (16, 16, 16), (64, 32, 32), 16)))
    seg = SegmenterConfig(local=NetworkConfig(levels=3, filters=4), spatial=NetworkConfig(levels=2, filters=4),
                          preprocess=SegPreprocessConfig(grid=GridConfig(6.0, (32, 32, 32), (64, 64, 64), 32),
                                                         margin_voxels=2))
    return loc, seg


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A model folder (loc/, seg/) with randomly initialised tiny networks and sha256 files."""
    import keras

    from flare_seg.config import save_config
    from flare_seg.models import build_model
    from flare_seg.predict import sha256_of

    root = tmp_path_factory.mktemp("tiny_models")
    keras.utils.set_random_seed(0)
    for name, config in zip(("loc", "seg"), tiny_configs(), strict=True):
        folder = root / name
        folder.mkdir()
        save_config(config, folder / "config.json")
        build_model(config).save_weights(folder / "model.weights.h5")
        (folder / "model.weights.h5.sha256").write_text(sha256_of(folder / "model.weights.h5") + "\n")
    return root


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
