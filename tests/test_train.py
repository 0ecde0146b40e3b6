"""Training: EMA (warm-up, raw vs EMA, saved file), exact resume, learning, data validation, folds, CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import tiny_configs

from flare_seg.config import AugmentConfig, TrainConfig, replace
from flare_seg.geometry import Geometry
from flare_seg.models import build_model
from flare_seg.training import augment, data
from flare_seg.training import loop as training
from flare_seg.training.data import TrainCase
from flare_seg.training.ema import AdamEMA, ema_variables


def blob_case(i: int, rng) -> TrainCase:
    """A small body with four organ blobs at plausible sides (liver low x, spleen high x)."""
    z, y, x = np.mgrid[:40, :48, :48]
    image = np.full((40, 48, 48), -1000, np.int16)
    labels = np.zeros((40, 48, 48), np.uint8)
    image[((y - 24) / 20) ** 2 + ((x - 24) / 20) ** 2 < 1] = 0
    c = rng.uniform(-3, 3, 3)
    for label, (cz, cy, cx, r, hu) in enumerate([(20, 20, 15, 7, 100), (14, 30, 34, 4, 180),
                                                 (24, 28, 36, 5, 60), (18, 18, 28, 3, 40)], 1):
        mask = (z - cz - c[0]) ** 2 + (y - cy - c[1]) ** 2 + (x - cx - c[2]) ** 2 < r * r
        labels[mask], image[mask] = label, hu
    return TrainCase(f"blob{i}", image, labels, (4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    return [blob_case(i, rng) for i in range(4)]


def seg_setup(**train_overrides):
    _, seg = tiny_configs()
    seg = replace(seg, preprocess=replace(seg.preprocess, grid=replace(seg.preprocess.grid, spacing_mm=4.0)))
    train = TrainConfig(steps=20, learning_rate=1e-3, checkpoint_every=10, validate_every=10,
                        train_size_zyx=(32, 32, 32), augment=AugmentConfig(enabled=False))
    return seg, replace(train, **train_overrides)


def _weights(path, config):
    model = build_model(config)
    model.load_weights(path)
    return [w.numpy() for w in model.weights]


def _max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


def test_ema_decay_warm_up():
    opt = AdamEMA(ema_momentum=0.999)
    var = keras.Variable(np.zeros(3, "float32"))
    opt.build([var])
    assert float(opt.ema_decay()) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    opt.apply([np.ones(3, "float32")], [var])
    # Adam moves the variable by -lr (first step, unit gradient); the EMA keeps 0.1 of its start
    new = var.numpy()
    ema = ema_variables(opt)[0].numpy()
    np.testing.assert_allclose(ema, 0.9 * new, rtol=1e-5)
    opt.iterations.assign(100_000)
    assert float(opt.ema_decay()) == pytest.approx(0.999)
    assert float(AdamEMA(ema_momentum=0.99, ema_warmup=False).ema_decay()) == pytest.approx(0.99)


@pytest.mark.slow
def test_resume_gives_identical_weights_and_the_saved_file_holds_ema(tmp_path, blobs):
    seg, train = seg_setup()
    training.train(seg, train, blobs[:3], tmp_path / "straight", val_cases=blobs[3:], progress=False)
    training.train(seg, replace(train, steps=10), blobs[:3], tmp_path / "split", progress=False)
    training.train(seg, train, blobs[:3], tmp_path / "split", val_cases=blobs[3:], resume=True, progress=False)
    straight = _weights(tmp_path / "straight" / "model.weights.h5", seg)
    resumed = _weights(tmp_path / "split" / "model.weights.h5", seg)
    assert _max_diff(straight, resumed) == 0.0  # deterministic CPU kernels, seeded data and dropout
    raw = _weights(tmp_path / "straight" / "checkpoint" / "raw.weights.h5", seg)
    ema = _weights(tmp_path / "straight" / "checkpoint" / "ema.weights.h5", seg)
    assert _max_diff(raw, ema) > 1e-4  # raw and EMA weights differ during training
    assert _max_diff(straight, ema) == 0.0  # model.weights.h5 holds the EMA weights
    import h5py
    with h5py.File(tmp_path / "straight" / "model.weights.h5") as fh:
        assert not any(key.startswith("optimizer") for key in fh)  # network weights only
    rows = list(__import__("csv").DictReader(open(tmp_path / "split" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == [10, 20]
    assert (tmp_path / "straight" / "curves.png").stat().st_size > 1000
    rows = [{"step": "1", "loss": "0.9"}, {"step": "2", "loss": "0.8", "val_dsc_liver": "0.5"}]
    training.plot_curves(rows, tmp_path / "c.png")  # validation only on some steps
    import matplotlib.image
    picture = matplotlib.image.imread(tmp_path / "c.png")
    right = picture[:, picture.shape[1] // 2 :, :3]
    assert (np.abs(right[..., 0] - right[..., 2]) > 0.3).any()  # a coloured curve in the DSC panel


def test_existing_checkpoint_needs_resume(tmp_path, blobs):
    seg, train = seg_setup(steps=2, checkpoint_every=2, validate_every=2)
    training.train(seg, train, blobs[:1], tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        training.train(seg, train, blobs[:1], tmp_path / "r", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        training.train(seg, train, blobs[:1], tmp_path / "fresh", resume=True, progress=False)


@pytest.mark.slow
def test_a_tiny_scn_learns(tmp_path, blobs):
    from flare_seg.config import NetworkConfig

    seg, train = seg_setup(steps=300, validate_every=150, checkpoint_every=150)
    seg = replace(seg, local=NetworkConfig(levels=3, filters=8))
    result = training.train(seg, train, blobs[:3], tmp_path / "learn", val_cases=blobs[3:], progress=False)
    first, last = result.log_rows[0], result.log_rows[-1]
    organs = ("liver", "kidney", "spleen", "pancreas")
    start = np.mean([float(first[f"val_dsc_{o}"]) for o in organs])
    end = np.mean([float(last[f"val_dsc_{o}"]) for o in organs])
    assert end > 0.5 and end > start + 0.3, (start, end)  # measured here: ~0.05 -> ~0.8
    best = json.loads((tmp_path / "learn" / "best.json").read_text())
    means = {int(r["step"]): training.mean_validation_dsc(r) for r in result.log_rows}
    assert best["mean_val_dsc"] == pytest.approx(max(v for v in means.values() if v is not None))
    assert (tmp_path / "learn" / "best.weights.h5").exists()
    assert float(last["loss"]) < float(first["loss"])


@pytest.mark.slow
def test_localizer_trains_and_validates(tmp_path, blobs):
    loc, _ = tiny_configs()
    train = TrainConfig(steps=4, checkpoint_every=2, validate_every=2, augment=AugmentConfig(enabled=True))
    result = training.train(loc, train, blobs[:2], tmp_path / "loc", val_cases=blobs[2:3], progress=False)
    assert "val_dsc_foreground" in result.log_rows[-1]
    assert (tmp_path / "loc" / "model.weights.h5").exists()


def test_samples_are_seeded_and_augmentation_keeps_sides(blobs):
    _, seg = tiny_configs()
    train = TrainConfig(train_size_zyx=(32, 32, 32))
    sampler = data.SegSampler(blobs, train, replace(seg.preprocess, grid=replace(seg.preprocess.grid, spacing_mm=4.0)))
    a, b = sampler.sample(5), sampler.sample(5)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(sampler.sample(6)[0], a[0])
    for i in range(8):  # no left-right mirroring: the liver stays on the patient's right (low x)
        _, y = sampler.sample(i)
        liver, spleen = np.argwhere(y[..., 1] > 0), np.argwhere(y[..., 3] > 0)
        if len(liver) and len(spleen):
            assert liver[:, 2].mean() < spleen[:, 2].mean()


def test_identity_transform_reproduces_the_plain_resampling(blobs):
    from flare_seg.preprocess import resample_to_grid, seg_record

    _, seg = tiny_configs()
    case = blobs[0]
    record = seg_record(((5, 5, 5), (30, 40, 40)), case.image_hu.shape, case.spacing_mm, seg.preprocess)
    coords = augment.sample_coordinates(record, case.spacing_mm, augment.SpatialTransform.identity())
    warped = augment.warp(case.image_hu, coords, order=1, cval=-1024)
    np.testing.assert_allclose(warped, resample_to_grid(case.image_hu, record, cval=-1024), atol=1e-3)


def test_dataset_validation_errors_name_the_case(tmp_path):
    from flare_seg import io

    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir(), labels.mkdir()
    g = Geometry((4, 5, 6), (2.0, 1.0, 1.0))
    io.write_image(np.zeros((4, 5, 6), np.int16), g, images / "a_0000.nii.gz")
    io.write_labels(np.full((4, 5, 6), 7, np.uint8), g, labels / "a.nii.gz")
    io.write_image(np.zeros((4, 5, 6), np.int16), g, images / "b_0000.nii.gz")
    io.write_labels(np.zeros((4, 5, 6), np.uint8), Geometry((4, 5, 6), (2.5, 1.0, 1.0)), labels / "b.nii.gz")
    pairs = {case: (image, label) for case, image, label in data.find_pairs(tmp_path)}
    assert set(pairs) == {"a", "b"}
    with pytest.raises(ValueError, match=r"a.nii.gz: label values 7..7 outside 0-4"):
        data.load_case("a", *pairs["a"])
    mapped = data.load_case("a", *pairs["a"], label_map={7: 1})
    assert mapped.labels.max() == 1
    with pytest.raises(ValueError, match="b: image and label grids differ: spacing"):
        data.load_case("b", *pairs["b"])
    (tmp_path / "list.json").write_text(json.dumps([{"image": "imagesTr/a_0000.nii.gz", "label": "labelsTr/a.nii.gz"}]))
    assert data.find_pairs(tmp_path / "list.json")[0][0] == "a"


def test_folds_are_seeded_disjoint_and_complete():
    ids = [f"c{i}" for i in range(10)]
    folds = data.make_folds(ids, 4, seed=3)
    assert folds == data.make_folds(ids, 4, seed=3) and folds != data.make_folds(ids, 4, seed=4)
    flat = [c for f in folds["folds"] for c in f]
    assert sorted(flat) == sorted(ids) and len(set(flat)) == 10
    cases = [TrainCase(i, np.zeros((1, 1, 1)), np.zeros((1, 1, 1), np.uint8), (1, 1, 1)) for i in ids]
    train_cases, val_cases = data.split_fold(cases, folds, 1)
    assert {c.case_id for c in val_cases} == set(folds["folds"][1]) and len(train_cases) + len(val_cases) == 10


@pytest.mark.slow
def test_training_cli_on_phantoms_writes_every_output(tmp_path, monkeypatch):
    from flare_seg.cli.main import main as cli
    from flare_seg.config import save_config

    loc, seg = tiny_configs()
    save_config(seg, tmp_path / "seg.json")
    code = cli(["train", "--net", "seg", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "seg.json"),
                "--synthetic", "2", "--synthetic-shape", "24,48,48", "--synthetic-spacing", "8,8,8",
                "--val-synthetic", "1", "--steps", "2", "--checkpoint-every", "2", "--validate-every", "2",
                "--train-size", "32,32,32", "--no-progress"])
    assert code == 0
    run = tmp_path / "run"
    for name in ("config.json", "train_config.json", "model.weights.h5", "train_log.csv", "curves.png", "carbon.json"):
        assert (run / name).exists(), name
    carbon = json.loads((run / "carbon.json").read_text())
    from flare_seg.training import carbon as carbon_module

    # measured only where this machine exposes RAPL; otherwise labelled an estimate, never "rapl"
    assert carbon["energy_source"] == ("rapl" if carbon_module.RAPL_PATH.exists() else "tdp_estimate")
    assert carbon["energy_kwh"] is None or carbon["energy_kwh"] >= 0
    assert json.loads((run / "data.json").read_text())["config"]["synthetic_shape_zyx"] == [24, 48, 48]
    # resume extends the same run with its saved settings and data; other data flags are refused
    assert cli(["train", "--out", str(run), "--resume", "--steps", "4", "--synthetic", "3",
                "--no-carbon", "--no-progress"]) != 0
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    assert cli(["train", "--out", str(run), "--resume", "--steps", "4", "--no-carbon", "--no-progress"]) == 0
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4


def test_interval_means_undo_keras_running_means():
    losses = np.array([5.0, 4.0, 3.0, 2.5, 2.0, 1.0])
    running = np.cumsum(losses) / np.arange(1, 7)  # what Keras logs after each batch
    first = training.interval_means(0, {}, 2, {"loss": running[1]})
    second = training.interval_means(2, {"loss": running[1]}, 6, {"loss": running[5]})
    assert first["loss"] == pytest.approx(4.5) and second["loss"] == pytest.approx(losses[2:].mean())


def test_generated_pool_and_real_ct_signal_in_the_loop(tmp_path, blobs):
    """A run on generated samples logs the real-CT signal at each validation and selects by it."""
    from flare_seg.synth.domain_rand import DomainRandConfig
    from flare_seg.synth.label_maps import phantom_label_map
    from flare_seg.training.generated import GeneratedPool
    from flare_seg.training.real_val import RealCase, selection_score

    seg, train = seg_setup(steps=4, validate_every=2, checkpoint_every=2)
    lm = phantom_label_map(np.random.default_rng(0), "p0", (40, 48, 48), (6.0, 6.0, 6.0))
    pool = GeneratedPool([lm], DomainRandConfig(work_spacing_mm=4.0, organ_margin_mm=20.0), blobs[:1], 0.5)
    negative = TrainCase("neg", np.full((20, 24, 24), 40, np.int16), np.zeros((20, 24, 24), np.uint8), (4.0,) * 3)
    real = [RealCase("blob", blobs[3], (1, 3)), RealCase("neg", negative, ())]
    result = training.train(seg, train, pool, tmp_path / "gen", val_cases=blobs[2:3], progress=False, real_cases=real)
    rows = [r for r in result.log_rows if "real_dsc_blob_liver" in r]
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all("real_fp_ml_neg" in r and float(r["real_fp_ml_neg"]) >= 0 for r in rows)
    best = json.loads((tmp_path / "gen" / "best.json").read_text())
    scores = {int(r["step"]): selection_score(r) for r in rows}
    assert best["selection_score"] == pytest.approx(max(scores.values()))
    assert best["step"] == max(scores, key=scores.get)
    header = (tmp_path / "gen" / "train_log.csv").read_text().splitlines()[0]
    assert "real_dsc_blob_spleen" in header and "real_fp_ml_neg" in header


def test_ema_starts_from_init_weights_not_the_random_init():
    from flare_seg.training.ema import ema_variables, reset_ema_to_weights
    from flare_seg.training.loop import compile_model

    loc, _ = tiny_configs()
    model = build_model(loc)
    compile_model(model, loc, TrainConfig(steps=1))
    model.optimizer.build(model.trainable_variables)
    for var in model.trainable_variables:  # "loaded" weights, unlike the EMA's copy of the random init
        var.assign(np.full(var.shape, 0.5, "float32"))
    before = [v.numpy().copy() for v in ema_variables(model.optimizer) if v is not None]
    assert not all(np.allclose(b, 0.5) for b in before)
    reset_ema_to_weights(model)
    for average in ema_variables(model.optimizer):
        if average is not None:
            np.testing.assert_array_equal(average.numpy(), 0.5)


class _IndexSampler:
    """Sample ``i`` is an image full of ``i`` and a two-label target (what make_dataset stacks)."""

    def sample(self, index):
        return np.full((2, 3, 4), index, np.float32), np.zeros((2, 3, 4, 2), np.float32) + index


def test_a_step_batches_consecutive_samples_and_batch_one_reads_sample_step():
    batches = training.make_dataset(_IndexSampler(), ("prob", "local"), start_step=3, num_steps=2, workers=1,
                                    batch_size=2)
    x, targets = batches[1]  # step 4: samples 8 and 9
    assert x.shape == (2, 2, 3, 4, 1) and x[:, 0, 0, 0, 0].tolist() == [8.0, 9.0]
    assert targets["prob"].shape == (2, 2, 3, 4, 2) and targets["local"][:, 0, 0, 0, 0].tolist() == [8.0, 9.0]
    single = training.make_dataset(_IndexSampler(), ("prob",), start_step=3, num_steps=2, workers=1)
    x, targets = single[1]
    assert x.shape == (1, 2, 3, 4, 1) and float(x.max()) == 4.0 and float(targets["prob"].max()) == 4.0
    assert single.samples == 1 and batches.samples == 2


def test_batch_size_defaults_to_one_for_older_runs_and_needs_fixed_crops():
    from flare_seg.config import from_dict, to_dict

    saved = to_dict(TrainConfig())
    del saved["batch_size"]  # a train_config.json written before the field existed
    assert from_dict(TrainConfig, saved).batch_size == 1
    assert TrainConfig(batch_size=2, train_size_zyx=(8, 8, 8)).batch_size == 2
    with pytest.raises(ValueError, match="batch_size 2 needs train_size_zyx"):
        TrainConfig(batch_size=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            TrainConfig(batch_size=bad)


def test_a_trained_models_grid_is_never_smaller_than_its_training_crops(tmp_path, blobs):
    """Thin scans got a 32-slice grid where the network trained on 96-slice crops and failed there;
    ``train`` saves a config whose minimum grid is the crop (rounded up to the multiple, capped)."""
    from flare_seg.config import load_config
    from flare_seg.training.loop import grid_no_smaller_than_crops, train

    seg, cfg = seg_setup(train_size_zyx=(40, 32, 80))  # grid (32..64)^3, multiple 32
    raised = grid_no_smaller_than_crops(seg, cfg)
    assert raised.preprocess.grid.size_min_zyx == (64, 32, 64)  # 40 -> 64 (multiple), 80 -> capped at 64
    assert raised.local == seg.local and raised.preprocess.margin_voxels == seg.preprocess.margin_voxels
    assert grid_no_smaller_than_crops(seg, replace(cfg, train_size_zyx=None)) is seg  # whole grids: unchanged
    assert grid_no_smaller_than_crops(raised, cfg) is raised  # idempotent, so --resume keeps it
    train(seg, replace(cfg, steps=0), blobs, tmp_path / "run", progress=False)
    assert load_config(tmp_path / "run" / "config.json").preprocess.grid.size_min_zyx == (64, 32, 64)
