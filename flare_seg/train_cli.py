"""``flare-seg train`` / ``python training/train_seg.py``: arguments -> :func:`flare_seg.train.train`.

Data: ``--data`` (FLARE/nnU-Net folder, flat folder or JSON list of pairs) and/or ``--synthetic N``
phantoms (parametric and around the bundled AMOS label map). Validation: a fold of a seeded k-fold
split (``--folds``/``--fold``), ``--val-data``, or for phantoms ``--val-synthetic`` held-out
phantoms drawn from seeds never used for training. ``--resume`` continues a run with the
settings saved in it. No TensorFlow or SimpleITK import happens here unless files are read or
the TensorFlow backend trains.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg.config import (AugmentConfig, LocalizerConfig, SegmenterConfig, TrainConfig, atomic_write_text,
                              from_dict, load_config, replace)

log = logging.getLogger(__name__)

#: Synthetic validation phantoms draw from this seed stream, training phantoms from another.
TRAIN_STREAM, VAL_STREAM = 1, 2

#: The data flags and their defaults; a run saves them as ``data.json`` so ``--resume`` needs none.
DATA_DEFAULTS = {"data": [], "label_map": None, "synthetic": 0, "synthetic_shape": [64, 160, 160],
                 "synthetic_spacing": [5.0, 2.5, 2.5], "synthetic_vary": False, "synthetic_chest": 0.0,
                 "val_data": None, "val_synthetic": 0}


def _triple(text: str, kind=float) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (z,y,x), got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", choices=("loc", "seg"), default="seg", help="localizer U-Net or SCN (default seg)")
    p.add_argument("--out", "-o", type=Path, required=True, help="run folder (config, weights, logs)")
    p.add_argument("--data", type=Path, action="append", default=[], help="dataset folder or JSON (repeatable)")
    p.add_argument("--label-map", help="map dataset labels to FLARE: amos, totalsegmentator, flare22 or 'src:dst,...'")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N phantom cases")
    p.add_argument("--synthetic-shape", type=lambda t: _triple(t, int), default=tuple(DATA_DEFAULTS["synthetic_shape"]),
                   metavar="Z,Y,X", help="phantom array size (default 64,160,160)")
    p.add_argument("--synthetic-spacing", type=_triple, default=tuple(DATA_DEFAULTS["synthetic_spacing"]), metavar="Z,Y,X",
                   help="phantom spacing in mm (default 5,2.5,2.5)")
    p.add_argument("--synthetic-vary", action="store_true",
                   help="randomize each phantom's spacing (x0.7-1.4), z extent (40-100 %%) and field-of-view shift")
    p.add_argument("--synthetic-chest", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of phantoms viewing the chest above the diaphragm (no organs; teaches the "
                        "localizer to find nothing there)")
    p.add_argument("--val-data", type=Path, help="validation dataset (folder or JSON)")
    p.add_argument("--val-synthetic", type=int, default=0, metavar="N", help="N held-out validation phantoms")
    p.add_argument("--folds", type=int, help="split the data into K seeded folds (paper: 4); saved as folds.json")
    p.add_argument("--fold", type=int, help="validate on fold k (0-based), train on the others")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--init", type=Path, help="start from weights: a .weights.h5 file or a model folder")
    p.add_argument("--config", type=Path, help="model config JSON (default: the paper's network)")
    p.add_argument("--train-config", type=Path, help="training config JSON (flags below override it)")
    p.add_argument("--steps", type=int, help="total training steps (paper: 1M loc, 500k seg)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (default 0.999)")
    p.add_argument("--no-ema-warmup", action="store_true", help="constant EMA decay from step 0")
    p.add_argument("--lambda-local", type=float, help="weight of the local CE loss (default 1)")
    p.add_argument("--lambda-spatial", type=float, help="weight of the spatial CE loss (default 1)")
    p.add_argument("--mixed-precision", action="store_true", help="float16 compute with loss scaling")
    p.add_argument("--clipnorm", type=float, help="gradient clipping by norm")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay")
    p.add_argument("--train-size", type=lambda t: _triple(t, int), metavar="Z,Y,X",
                   help="fixed training grid size: random crops of the ROI (CPU compromise)")
    p.add_argument("--no-augment", action="store_true", help="turn data augmentation off")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--validate-every", type=int, help="steps between validations (default 500)")
    p.add_argument("--workers", type=int, help="sample-producing threads (default 1)")
    p.add_argument("--threads", type=int, help="compute threads of the backend (TensorFlow intra-op)")
    p.add_argument("--seed", type=int, help="seed of init, data order, augmentation and dropout")
    p.add_argument("--no-carbon", action="store_true", help="do not track energy/CO2 with carbontracker")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args) -> TrainConfig:
    if args.resume and (args.out / "train_config.json").exists():
        cfg = from_dict(TrainConfig, json.loads((args.out / "train_config.json").read_text()))
    elif args.train_config:
        cfg = from_dict(TrainConfig, json.loads(args.train_config.read_text()))
    else:
        cfg = TrainConfig()
    overrides = {
        "steps": args.steps, "learning_rate": args.lr, "ema_decay": args.ema_decay,
        "loss_lambda_local": args.lambda_local, "loss_lambda_spatial": args.lambda_spatial,
        "clipnorm": args.clipnorm, "weight_decay": args.weight_decay, "train_size_zyx": args.train_size,
        "checkpoint_every": args.checkpoint_every, "validate_every": args.validate_every,
        "workers": args.workers, "seed": args.seed, "folds": args.folds, "fold": args.fold,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_ema_warmup:
        cfg = replace(cfg, ema_warmup=False)
    if args.mixed_precision:
        cfg = replace(cfg, mixed_precision=True)
    if args.no_augment:
        cfg = replace(cfg, augment=AugmentConfig(enabled=False))
    return cfg


def _model_config(args, train_config: TrainConfig):
    if args.resume and (args.out / "config.json").exists():
        return load_config(args.out / "config.json")
    config = load_config(args.config) if args.config else (LocalizerConfig() if args.net == "loc" else SegmenterConfig())
    if train_config.mixed_precision:
        config = replace(config, dtype_policy="mixed_float16")
    return config


@dataclass(frozen=True)
class SyntheticSpec:
    """How phantoms are drawn: base shape/spacing, per-phantom variation, share of chest-only views."""

    shape_zyx: tuple = (64, 160, 160)
    spacing_mm: tuple = (5.0, 2.5, 2.5)
    vary: bool = False
    chest_fraction: float = 0.0


def _phantom_view(rng: np.random.Generator, spec: SyntheticSpec, chest: bool):
    """Shape, spacing and field-of-view shift of one phantom (domain randomization when ``spec.vary``)."""
    shape, spacing = np.asarray(spec.shape_zyx), np.asarray(spec.spacing_mm, dtype=float)
    shift = np.zeros(3)
    if spec.vary:
        spacing = spacing * rng.uniform(0.7, 1.4, size=3)
        spacing[2] = spacing[1]  # square pixels in-plane
        shape = np.maximum(np.round(shape * np.asarray(spec.spacing_mm) / spacing), 8).astype(int)
        shape[0] = max(8, int(shape[0] * rng.uniform(0.4, 1.0)))
        shift = np.array([rng.uniform(-60, 60), rng.uniform(-15, 15), rng.uniform(-20, 20)])
    if chest:
        shift[0] = rng.uniform(200, 260)  # the view starts above the diaphragm dome
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing), tuple(float(v) for v in shift)


def synthetic_cases(count: int, seed: int, stream: int, spec: SyntheticSpec) -> list:
    """``count`` phantoms from seed stream ``stream``: parametric, every other one around the bundled
    AMOS label map, and a ``spec.chest_fraction`` share of chest-only views (no organs)."""
    from flare_seg import phantom
    from flare_seg.data import make_case
    from flare_seg.geometry import Geometry

    cases = []
    amos = phantom_label_map()
    n_chest = int(round(count * spec.chest_fraction))
    for i in range(count):
        rng = np.random.default_rng([seed, stream, i])
        chest = i >= count - n_chest
        if i % 2 == 1 and amos is not None and not chest:
            ct, labels = phantom.phantom_from_label_map(rng, amos[0], amos[1], source="amos")
            case_spacing = amos[1]
        else:
            shape, case_spacing, shift = _phantom_view(rng, spec, chest)
            ct, labels = phantom.make_phantom(rng, shape_zyx=shape, spacing_mm=case_spacing,
                                              field_of_view_shift_mm=shift)
        geometry = Geometry(ct.shape, tuple(float(s) for s in case_spacing))
        cases.append(make_case(f"phantom_s{stream}_{i:04d}", ct, labels, geometry))
    return cases


def phantom_label_map():
    """The bundled AMOS label map ``(labels, spacing_mm)`` (canonical orientation), or None."""
    from importlib import resources

    path = resources.files("flare_seg") / "data" / "amos_0013_labels.npz"
    if not path.is_file():
        return None
    with np.load(str(path)) as data:
        return data["labels"], tuple(float(s) for s in data["spacing_mm"])


def _load_dataset(sources, label_map) -> list:
    from flare_seg.data import find_pairs, load_case
    from flare_seg.labels import parse_label_map

    mapping = parse_label_map(label_map) if label_map else None
    cases = []
    for source in sources:
        for case_id, image, label in find_pairs(source):
            cases.append(load_case(case_id, image, label, label_map=mapping))
            log.info("loaded %s %s", case_id, cases[-1].image_hu.shape)
    return cases


def _data_flags(args) -> dict:
    """The run's data flags as JSON values (paths as strings, triples as lists)."""
    def plain(value):
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {key: plain(getattr(args, key)) for key in DATA_DEFAULTS}


def resolve_data_flags(args) -> None:
    """Save the data flags in ``<out>/data.json``; on ``--resume`` take them from there.

    Resuming with other data than the run started with would silently change what the
    checkpoint's step count means, so data flags that differ from the saved ones are an error."""
    path = args.out / "data.json"
    given = _data_flags(args)
    if args.resume and path.exists():
        saved = {**DATA_DEFAULTS, **json.loads(path.read_text())}
        if given != DATA_DEFAULTS and given != saved:
            changed = sorted(k for k in DATA_DEFAULTS if given[k] != saved[k])
            raise ValueError(f"{path}: the run was started with other data flags ({', '.join(changed)}); "
                             "--resume reuses the saved ones: drop the data flags or start a new run")
        for key, value in saved.items():
            if key == "data":
                value = [Path(v) for v in value]
            elif key == "val_data" and value is not None:
                value = Path(value)
            elif key in ("synthetic_shape", "synthetic_spacing"):
                value = tuple(value)
            setattr(args, key, value)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(given, indent=2) + "\n")


def _cases(args, cfg: TrainConfig):
    from flare_seg.data import make_folds, save_folds, split_fold

    cases = _load_dataset(args.data, args.label_map)
    spec = SyntheticSpec(args.synthetic_shape, args.synthetic_spacing, args.synthetic_vary, args.synthetic_chest)
    cases += synthetic_cases(args.synthetic, cfg.seed, TRAIN_STREAM, spec)
    if not cases:
        raise ValueError("no training data: give --data and/or --synthetic N")
    val = _load_dataset([args.val_data], args.label_map) if args.val_data else []
    val += synthetic_cases(args.val_synthetic, cfg.seed, VAL_STREAM, replace(spec, chest_fraction=0.0))
    if cfg.fold is not None:
        folds_path = args.out / "folds.json"
        if folds_path.exists():
            folds = json.loads(folds_path.read_text())
        else:
            folds = make_folds([c.case_id for c in cases], cfg.folds, cfg.seed)
            args.out.mkdir(parents=True, exist_ok=True)
            save_folds(folds, folds_path)
        cases, held = split_fold(cases, folds, cfg.fold)
        val += held
    return cases, val


def _init_weights(path: Path | None) -> Path | None:
    if path is None:
        return None
    if path.is_dir():
        path = path / "model.weights.h5"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: --init weights not found")
    return path


def run(args) -> int:
    from flare_seg import runtime
    from flare_seg.carbon import CarbonWatcher
    from flare_seg.train import train

    cfg = _train_config(args)
    model_config = _model_config(args, cfg)
    runtime.configure_training(threads=args.threads, deterministic=True)
    resolve_data_flags(args)
    cases, val_cases = _cases(args, cfg)
    log.info("training %s on %d cases, validating on %d, %d steps", type(model_config).__name__,
             len(cases), len(val_cases), cfg.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    with CarbonWatcher(args.out, enabled=not args.no_carbon):
        result = train(model_config, cfg, cases, args.out, val_cases=val_cases, resume=args.resume,
                       init_weights=_init_weights(args.init), progress=not args.no_progress)
    last = result.log_rows[-1] if result.log_rows else {}
    scores = ", ".join(f"{k[8:]} {float(v):.3f}" for k, v in last.items() if k.startswith("val_dsc_") and v != "")
    print(f"{args.out}: step {result.step}; EMA weights in {args.out / 'model.weights.h5'}"
          + (f"; validation DSC {scores}" if scores else ""))
    return 0


def main(argv=None, net: str | None = None) -> int:
    """Entry point of ``training/train_*.py``: ``flare-seg train`` with ``--net`` preset."""
    from flare_seg.cli import main as cli_main

    argv = list(argv if argv is not None else __import__("sys").argv[1:])
    if net is not None and "--net" not in argv:
        argv = ["--net", net] + argv
    return cli_main(["train"] + argv)
