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
