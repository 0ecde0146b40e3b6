"""Configuration dataclasses: JSON round trip, validation, atomic writing."""

import json
import os

import pytest

from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig, from_dict, load_config, save_config, to_dict


@pytest.mark.parametrize("config", [LocalizerConfig(), SegmenterConfig(), TrainConfig(train_size_zyx=(64, 64, 64))])
def test_json_round_trip(tmp_path, config):
    save_config(config, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == config
    payload = json.loads((tmp_path / "c.json").read_text())
    assert payload["flare_seg_version"] and payload["kind"] in ("localizer", "segmenter", "train")
    # a new file gets the umask's permissions (not mkstemp's 0600), whatever the umask is
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_paper_defaults():
    loc, seg, train = LocalizerConfig(), SegmenterConfig(), TrainConfig()
    assert loc.preprocess.grid.spacing_mm == 6.0 and loc.preprocess.smoothing_sigma_mm == 3.0
    assert loc.preprocess.grid.size_max_zyx == (256, 80, 80)
    assert seg.preprocess.grid.spacing_mm == 2.0 and seg.preprocess.margin_voxels == 16
    assert seg.preprocess.grid.size_max_zyx == (160, 128, 160) and seg.preprocess.grid.size_multiple == 32
    assert seg.preprocess.intensity.scale_hu == 2048 and seg.preprocess.intensity.pad_hu == -1024
    assert train.learning_rate == 1e-4 and train.ema_decay == 0.999
    assert (train.augment.translation_mm, train.augment.rotation_rad, train.augment.scale) == (20.0, 0.35, 0.2)


def test_unknown_keys_and_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig settings"):
        from_dict(TrainConfig, {"stepz": 3})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_config(tmp_path / "bad.json")
    (tmp_path / "kind.json").write_text(json.dumps({"kind": "nope", "config": {}}))
    with pytest.raises(ValueError, match="unknown config kind"):
        load_config(tmp_path / "kind.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_config(tmp_path / "missing.json")


def test_nested_values_rebuild_as_tuples_and_dataclasses():
    data = to_dict(SegmenterConfig())
    rebuilt = from_dict(SegmenterConfig, data)
    assert isinstance(rebuilt.preprocess.grid.size_max_zyx, tuple)
    assert rebuilt == SegmenterConfig()


def test_data_config_round_trip_and_legacy_flat_data_json(tmp_path):
    from flare_seg.config import DataConfig, load_config, save_config

    config = DataConfig(data=("a/", "b.json"), synthetic=3, synthetic_shape_zyx=(8, 16, 16), val_synthetic=1)
    save_config(config, tmp_path / "data.json")
    assert load_config(tmp_path / "data.json") == config
    # runs started before DataConfig saved the flags flat (training/checkpoints/seg/data.json is one)
    legacy = {"data": [], "label_map": None, "synthetic": 32, "synthetic_shape": [80, 224, 224],
              "synthetic_spacing": [4.0, 1.8, 1.8], "synthetic_vary": True, "synthetic_chest": 0.0,
              "val_data": None, "val_synthetic": 4}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    old = load_config(tmp_path / "old.json")
    assert old == DataConfig(synthetic=32, synthetic_shape_zyx=(80, 224, 224), synthetic_spacing_mm=(4.0, 1.8, 1.8),
                             synthetic_vary=True, val_synthetic=4)


def test_resume_refuses_other_data_flags(tmp_path):
    from flare_seg.config import DataConfig
    from flare_seg.training.cases import resolve_data_config

    started = DataConfig(synthetic=4)
    assert resolve_data_config(tmp_path, started, resume=False) == started
    assert resolve_data_config(tmp_path, DataConfig(), resume=True) == started  # no flags: the saved ones
    with pytest.raises(ValueError, match="other data flags \\(synthetic\\)"):
        resolve_data_config(tmp_path, DataConfig(synthetic=5), resume=True)
