"""``flare-seg train`` / ``python training/train_seg.py``: arguments -> :func:`flare_seg.training.loop.train`.

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
import signal
from pathlib import Path

from flare_seg.cli.args import int_triple, triple
from flare_seg.config import (
    AugmentConfig,
    DataConfig,
    LocalizerConfig,
    SegmenterConfig,
    TrainConfig,
    from_dict,
    load_config,
    replace,
    to_dict,
)
from flare_seg.training.distribute import STRATEGIES

log = logging.getLogger(__name__)

_DATA = DataConfig()  # the data flags' defaults


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--net", choices=("loc", "seg"), default="seg", help="localizer U-Net or SCN (default seg)")
    p.add_argument("--out", "-o", type=Path, required=True, help="run folder (config, weights, logs)")
    p.add_argument("--data", type=Path, action="append", default=[], help="dataset folder or JSON (repeatable)")
    p.add_argument("--label-map", help="map dataset labels to FLARE: amos, totalsegmentator, flare22 or 'src:dst,...'")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="add N phantom cases")
    p.add_argument("--synthetic-shape", type=int_triple, default=_DATA.synthetic_shape_zyx,
                   metavar="Z,Y,X", help="phantom array size (default 64,160,160)")
    p.add_argument("--synthetic-spacing", type=triple, default=_DATA.synthetic_spacing_mm, metavar="Z,Y,X",
                   help="phantom spacing in mm (default 5,2.5,2.5)")
    p.add_argument("--synthetic-vary", action="store_true",
                   help="randomize each phantom's spacing (x0.7-1.4), z extent (40-100 %%) and field-of-view shift")
    p.add_argument("--synthetic-chest", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of phantoms viewing the chest above the diaphragm (no organs; teaches the "
                        "localizer to find nothing there)")
    p.add_argument("--domain-rand", action="store_true",
                   help="train on SynthSeg-style samples generated on the fly from the bundled real label maps "
                        "(flare_seg.synth.domain_rand); cached cases (--data, --synthetic) are mixed in")
    p.add_argument("--domain-rand-config", type=Path, metavar="JSON",
                   help="DomainRandConfig settings overriding the per-network defaults")
    p.add_argument("--generated-phantom-maps", type=int, default=_DATA.generated_phantom_maps, metavar="N",
                   help="add N parametric phantom tissue maps to the generator's label maps")
    p.add_argument("--generated-cached-fraction", type=float, default=_DATA.generated_cached_fraction,
                   help="share of samples taken from the cached cases when generating (default 0.2)")
    p.add_argument("--real-val", type=Path, metavar="JSON",
                   help="real CTs scored at every validation and used for best-checkpoint selection "
                        "(e.g. training/configs/real_val.json)")
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
    p.add_argument("--train-size", type=int_triple, metavar="Z,Y,X",
                   help="fixed training grid size: random crops of the ROI (CPU compromise)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="samples per step over all devices (default 1, the paper); > 1 needs --train-size")
    p.add_argument("--no-augment", action="store_true", help="turn data augmentation off")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    p.add_argument("--validate-every", type=int, help="steps between validations (default 500)")
    p.add_argument("--workers", type=int, help="sample-producing threads (default 1)")
    p.add_argument("--distribute", choices=STRATEGIES + ("none",),
                   help="split each batch over every visible GPU (TensorFlow MirroredStrategy, JAX DataParallel); "
                        "use with --batch-size a multiple of the device count. Saved with the run: --resume "
                        "keeps it, --distribute none turns it off")
    p.add_argument("--threads", type=int, help="compute threads of the backend (TensorFlow intra-op)")
    p.add_argument("--seed", type=int, help="seed of init, data order, augmentation and dropout")
    p.add_argument("--architecture", choices=("scn", "unet", "attention_unet"),
                   help="segmenter: SCN (default), plain U-Net or attention-gate U-Net (seed 003)")
    p.add_argument("--anatomical-attention", action="store_true",
                   help="segmenter input + signed distance to the coarse organ mask (seed 000)")
    p.add_argument("--presence-head", action="store_true",
                   help="segmenter + a head predicting which organs the input contains, scaling their output "
                        "(seed 001's attention module; TensorFlow engine only)")
    p.add_argument("--presence-weight", type=float,
                   help="weight of the presence head's cross-entropy (default 1)")
    p.add_argument("--per-organ", action="store_true",
                   help="localizer with one channel per organ (needed to train it on partially annotated data)")
    p.add_argument("--data-weights", type=lambda s: tuple(float(v) for v in s.split(",")), metavar="W1,W2,...",
                   help="sampling weight of each --data source (default: every case equally likely)")
    p.add_argument("--no-partial-labels", action="store_true",
                   help="treat organs a dataset.json does not annotate as background (naive baseline)")
    p.add_argument("--partial-roi-localizer", type=Path, metavar="DIR",
                   help="segmenter: partially annotated cases train in the box this localizer model finds on them "
                        "(as at inference), not in the box of their annotated organs alone")
    p.add_argument("--partial-mode", choices=("recalibrate", "self"),
                   help="segmenter, organs a dataset.json does not annotate: merged into the background (seed "
                        "001, default) or trained only where known absent, background against the network's own "
                        "belief (self)")
    p.add_argument("--loss", choices=("paper", "hybrid"),
                   help="Dice term: generalized Dice (paper) or batch Dice + spatially balanced focal (seed 001)")
    p.add_argument("--focal-gamma", type=float, help="focusing exponent of the hybrid loss's focal term (default 2)")
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
        "loss": args.loss, "focal_gamma": args.focal_gamma, "batch_size": args.batch_size,
        "presence_weight": args.presence_weight, "partial_mode": args.partial_mode,
    }
    if args.distribute is not None:
        cfg = replace(cfg, distribute=None if args.distribute == "none" else args.distribute)
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_ema_warmup:
        cfg = replace(cfg, ema_warmup=False)
    if args.mixed_precision:
        cfg = replace(cfg, mixed_precision=True)
    if args.no_augment:
        cfg = replace(cfg, augment=AugmentConfig(enabled=False))
    if args.no_partial_labels:
        cfg = replace(cfg, partial_labels=False)
    return cfg


def _model_config(args, train_config: TrainConfig):
    if args.resume and (args.out / "config.json").exists():
        return load_config(args.out / "config.json")
    default = LocalizerConfig() if args.net == "loc" else SegmenterConfig()
    config = load_config(args.config) if args.config else default
    if train_config.mixed_precision:
        config = replace(config, dtype_policy="mixed_float16")
    if isinstance(config, SegmenterConfig):
        if args.architecture:
            config = replace(config, architecture=args.architecture)
        if args.anatomical_attention:
            config = replace(config, anatomical_attention=True)
        if args.presence_head:
            config = replace(config, presence_head=True)
    elif args.per_organ:
        config = replace(config, num_labels=5)
    if args.presence_head and not isinstance(config, SegmenterConfig):
        raise ValueError("--presence-head applies to the segmenter (--net seg), not the localizer")
    if args.partial_roi_localizer and not isinstance(config, SegmenterConfig):
        raise ValueError("--partial-roi-localizer applies to the segmenter (--net seg), not the localizer")
    return config


def domain_rand_config(args):
    """The generator's settings: SCN 2 mm crops around the organs, localizer 4 mm whole maps, then the JSON."""
    if not getattr(args, "domain_rand", False):
        return None
    from flare_seg.synth.domain_rand import DomainRandConfig

    default = DomainRandConfig(work_spacing_mm=2.0, organ_margin_mm=50.0) if args.net == "seg" else \
        DomainRandConfig(work_spacing_mm=4.0, organ_margin_mm=None)
    if args.domain_rand_config is None:
        return default
    return from_dict(DomainRandConfig, {**to_dict(default), **json.loads(args.domain_rand_config.read_text())})


def data_config(args) -> DataConfig:
    """The data flags as a :class:`DataConfig` (defaults live there, not here)."""
    return DataConfig(data=tuple(str(p) for p in args.data), label_map=args.label_map, synthetic=args.synthetic,
                      synthetic_shape_zyx=tuple(args.synthetic_shape),
                      synthetic_spacing_mm=tuple(args.synthetic_spacing),
                      synthetic_vary=args.synthetic_vary, synthetic_chest=args.synthetic_chest,
                      val_data=str(args.val_data) if args.val_data else None, val_synthetic=args.val_synthetic,
                      data_weights=tuple(args.data_weights or ()),
                      domain_rand=domain_rand_config(args), generated_phantom_maps=args.generated_phantom_maps,
                      generated_cached_fraction=args.generated_cached_fraction,
                      real_val=str(args.real_val) if args.real_val else None,
                      partial_roi_localizer=str(args.partial_roi_localizer) if args.partial_roi_localizer else None)


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
    from flare_seg.training.carbon import CarbonWatcher
    from flare_seg.training.cases import real_validation_cases, resolve_data_config, training_cases
    from flare_seg.training.loop import train

    cfg = _train_config(args)
    model_config = _model_config(args, cfg)
    runtime.configure_training(threads=args.threads, deterministic=True)
    data = resolve_data_config(args.out, data_config(args), args.resume)
    cases, val_cases = training_cases(data, cfg, args.out)
    real_cases = real_validation_cases(data)
    log.info("training %s on %d cases, validating on %d, %d steps", type(model_config).__name__,
             len(cases), len(val_cases), cfg.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    with CarbonWatcher(args.out, enabled=not args.no_carbon):
        result = train(model_config, cfg, cases, args.out, val_cases=val_cases, resume=args.resume,
                       init_weights=_init_weights(args.init), progress=not args.no_progress, real_cases=real_cases)
    if result.stopped:  # SIGTERM / Ctrl-C: a checkpoint at the step it stopped (flare_seg.training.stopping)
        print(f"{args.out}: stopped by {result.stopped} at step {result.step} of {cfg.steps}; continue with "
              f"the same command and --resume")
        return 128 + signal.Signals[result.stopped]
    last = result.log_rows[-1] if result.log_rows else {}
    scores = ", ".join(f"{k[8:]} {float(v):.3f}" for k, v in last.items() if k.startswith("val_dsc_") and v != "")
    print(f"{args.out}: step {result.step}; EMA weights in {args.out / 'model.weights.h5'}"
          + (f"; validation DSC {scores}" if scores else ""))
    return 0


def main(argv=None, net: str | None = None) -> int:
    """Entry point of ``training/train_*.py``: ``flare-seg train`` with ``--net`` preset."""
    from flare_seg.cli.main import main as cli_main

    argv = list(argv if argv is not None else __import__("sys").argv[1:])
    if net is not None and "--net" not in argv:
        argv = ["--net", net] + argv
    return cli_main(["train"] + argv)
