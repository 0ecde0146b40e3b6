"""A run's training and validation cases from its :class:`~flare_seg.config.DataConfig`.

The data config is saved in the run folder (``data.json``), so ``--resume`` needs no data flags
and refuses others: resuming on other data would silently change what the checkpoint's step
count means.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flare_seg.config import DataConfig, TrainConfig, load_config, replace, save_config

log = logging.getLogger(__name__)

DATA_FILE = "data.json"


def resolve_data_config(out: Path, given: DataConfig, resume: bool) -> DataConfig:
    """The run's data config: saved in ``out/data.json`` for a new run, read back from it on resume."""
    path = Path(out) / DATA_FILE
    if resume and path.exists():
        saved = load_config(path)
        if given != DataConfig() and given != saved:
            changed = sorted(k for k in DataConfig.__dataclass_fields__ if getattr(given, k) != getattr(saved, k))
            raise ValueError(f"{path}: the run was started with other data flags ({', '.join(changed)}); "
                             "--resume reuses the saved ones: drop the data flags or start a new run")
        return saved
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(given, path)
    return given


def load_dataset(sources, label_map: str | None, weights=()) -> list:
    """Every (image, label) pair of the dataset folders / JSON lists in ``sources`` as training cases.

    A folder's ``dataset.json`` says which organs it annotates (:mod:`flare_seg.training.partial`);
    ``weights`` (one per source, or empty) make each source's share of the samples that weight."""
    from flare_seg.labels import parse_label_map
    from flare_seg.training.data import find_pairs, load_case
    from flare_seg.training.partial import case_annotations, keep_annotated, read_annotations

    if weights and len(weights) != len(sources):
        raise ValueError(f"data_weights: {len(weights)} weight(s) for {len(sources)} --data source(s)")
    mapping = parse_label_map(label_map) if label_map else None
    cases = []
    for k, source in enumerate(sources):
        annotations = read_annotations(source)
        pairs = find_pairs(source)
        for case_id, image, label in pairs:
            case = load_case(case_id, image, label, label_map=mapping)
            case.annotated = case_annotations(annotations, case_id, source)
            case.labels = keep_annotated(case.labels, case.annotated)
            case.weight = float(weights[k]) / len(pairs) if weights else 1.0
            cases.append(case)
            log.info("loaded %s %s (annotated: %s)", case_id, case.image_hu.shape, case.annotated or "all")
    return cases


def training_cases(data: DataConfig, cfg: TrainConfig, out: Path) -> tuple[list, list]:
    """(training cases, validation cases); a cross-validation fold's split is saved as ``folds.json``."""
    from flare_seg.training.data import make_folds, save_folds, split_fold
    from flare_seg.training.synthetic import TRAIN_STREAM, VAL_STREAM, SyntheticSpec, synthetic_cases

    cases = load_dataset([Path(p) for p in data.data], data.label_map, data.data_weights)
    if data.partial_roi_localizer:  # the segmenter's box of partially annotated cases
        from flare_seg.training.roi import localizer_rois

        cases = localizer_rois(cases, data.partial_roi_localizer)
    spec = SyntheticSpec(data.synthetic_shape_zyx, data.synthetic_spacing_mm, data.synthetic_vary,
                         data.synthetic_chest)
    cases += synthetic_cases(data.synthetic, cfg.seed, TRAIN_STREAM, spec)
    if data.domain_rand is not None:  # fresh bodies from label maps, the cached cases mixed in
        from flare_seg.training.generated import make_pool

        net = "seg" if data.domain_rand.organ_margin_mm is not None else "loc"
        cases = make_pool(data, cfg.seed, net, cases)
    if not len(cases):
        raise ValueError("no training data: give --data, --synthetic N and/or --domain-rand")
    val = load_dataset([Path(data.val_data)], data.label_map) if data.val_data else []
    val += synthetic_cases(data.val_synthetic, cfg.seed, VAL_STREAM, replace(spec, chest_fraction=0.0))
    if cfg.fold is not None:
        if data.domain_rand is not None:
            raise ValueError("--fold splits cached cases; it cannot be combined with --domain-rand")
        folds_path = Path(out) / "folds.json"
        if folds_path.exists():
            folds = json.loads(folds_path.read_text())
        else:
            folds = make_folds([c.case_id for c in cases], cfg.folds, cfg.seed)
            folds_path.parent.mkdir(parents=True, exist_ok=True)
            save_folds(folds, folds_path)
        cases, held = split_fold(cases, folds, cfg.fold)
        val += held
    return cases, val


def real_validation_cases(data: DataConfig) -> list:
    """The real validation CTs of ``data.real_val`` (:mod:`flare_seg.training.real_val`), or none."""
    if not data.real_val:
        return []
    from flare_seg.training.real_val import load_real_cases

    return load_real_cases(data.real_val)
