"""The real-CT validation signal: real CTs scored at every validation, beside the held-out phantoms.

A JSON file names the cases; their paths are relative to ``root`` (itself relative to the file;
the environment variable ``FLARE_SEG_SHARED_DATA`` overrides it, for checkouts not next to ``../shared``)::

    {"root": "../../../shared/data",
     "cases": [{"name": "amos_0018", "image": "amos_0018/...ct.nii.gz", "label": "amos_0018/...flare.nii.gz",
                "organs": [1, 2, 3, 4]},
               {"name": "chest_above_diaphragm", "image": "...nii.gz", "label": null, "organs": []}]}

Cases with organs give ``real_dsc_<name>_<organ>`` (SCN: per organ; localizer: ``foreground``);
cases without give ``real_fp_ml_<name>``, the organ volume wrongly found. The localizer also gives
``real_box_recall_<name>``, the fraction of the case's organ voxels (on the CT's own grid) inside
the box the pipeline would take from its output (:func:`flare_seg.preprocess.box_in_input`): that
box is the localizer's job. (Before the localizer's target marked every cell an organ touches, a
case thinner than a 6 mm cell, the liver dome, had no foreground on the grid, and its "DSC" of 1.0
only meant that the localizer found nothing there either.) The SCN sees the
ground-truth box + its usual margin (the whole cached body region for a negative case), the
localizer the whole image; both on the network grid, un-augmented, whole (no training crop).

Best-checkpoint selection (:func:`selection_score`):
``mean(real DSC and box recall) + 0.25 * mean(phantom DSC) - min(0.5, false-positive ml / 100)``;
without real cases it is the mean phantom DSC as before.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg.config import LocalizerConfig, TrainConfig, replace
from flare_seg.labels import NAMES
from flare_seg.training.data import LocSampler, SegSampler, TrainCase, make_case

log = logging.getLogger(__name__)

PHANTOM_WEIGHT, FP_ML_PER_POINT, FP_PENALTY_MAX = 0.25, 100.0, 0.5


@dataclass
class RealCase:
    name: str
    case: TrainCase
    organs: tuple[int, ...]  # FLARE labels scored; empty: a negative case (no organ should be found)


def load_real_cases(path: str | Path) -> list[RealCase]:
    """Read the cases of a real-validation JSON list (see the module docstring)."""
    from flare_seg import io

    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the real-validation list ({err})") from None
    root = Path(os.environ.get("FLARE_SEG_SHARED_DATA") or path.parent / spec.get("root", "."))
    cases = []
    for entry in spec["cases"]:
        image = root / entry["image"]
        volume = io.read_ct(image)
        if entry.get("label"):
            labels, geometry, _ = io.read_image(root / entry["label"])
            problem = volume.geometry.mismatch(geometry)
            if problem:
                raise ValueError(f"{entry['label']}: label grid differs from {image}: {problem}")
        else:
            labels = np.zeros(volume.array.shape, np.uint8)
        case = make_case(entry["name"], volume.array, labels.astype(np.uint8), volume.geometry)
        cases.append(RealCase(entry["name"], case, tuple(int(k) for k in entry.get("organs", ()))))
        log.info("real validation case %s %s, organs %s", entry["name"], case.image_hu.shape, cases[-1].organs)
    return cases


def _sampler(model_config, train: TrainConfig, case: TrainCase):
    train = replace(train, train_size_zyx=None)  # the whole region, not a training crop
    if isinstance(model_config, LocalizerConfig):
        return LocSampler([case], train, model_config.preprocess)
    return SegSampler([case], train, model_config.preprocess, model_config.num_labels)


def score_case(model, model_config, train: TrainConfig, real: RealCase) -> dict[str, float]:
    """DSC per scored organ (or foreground), or the false-positive organ volume (ml), of one case."""
    from flare_seg.evaluation.metrics import dice

    sampler = _sampler(model_config, train, real.case)
    x, y = sampler.sample(0, augment_data=False)
    name = "logits" if isinstance(model_config, LocalizerConfig) else "prob"
    pred = np.argmax(np.asarray(model.predict_on_batch(x[None, ..., None])[name])[0], axis=-1)
    truth = np.argmax(y, axis=-1)
    if not real.organs:
        voxel_ml = float(np.prod(sampler.base_record(0).spacing_mm)) / 1000.0
        return {f"real_fp_ml_{real.name}": float((pred > 0).sum()) * voxel_ml}
    if isinstance(model_config, LocalizerConfig):
        out = {f"real_box_recall_{real.name}": box_recall(pred > 0, sampler.base_record(0), real)}
        if (truth == 1).any():  # else no organ lies on the localizer's grid: no foreground to score
            out[f"real_dsc_{real.name}_foreground"] = dice(pred == 1, truth == 1)
        return out
    return {f"real_dsc_{real.name}_{NAMES[k]}": dice(pred == k, truth == k) for k in real.organs}


def box_recall(mask: np.ndarray, record, real: RealCase) -> float:
    """Fraction of the case's scored organ voxels inside the pipeline's box around ``mask`` (0 if no box)."""
    from flare_seg.preprocess import box_in_input

    box = box_in_input(mask, record)
    if box is None:
        return 0.0
    organs = np.isin(real.case.labels, real.organs)
    (z0, y0, x0), (z1, y1, x1) = box
    return float(organs[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1].sum()) / float(organs.sum())


def validate_real(model, model_config, train: TrainConfig, cases: list[RealCase]) -> dict[str, float]:
    out: dict[str, float] = {}
    for real in cases:
        out.update(score_case(model, model_config, train, real))
    return out


def _values(row: dict, prefix: str) -> list[float]:
    return [float(v) for k, v in row.items() if k.startswith(prefix) and v not in (None, "")]


def selection_score(row: dict) -> float | None:
    """The best-checkpoint score of a log row (module docstring), or None if it has no validation."""
    real = _values(row, "real_dsc_") + _values(row, "real_box_recall_")
    phantom, fp_ml = _values(row, "val_dsc_"), _values(row, "real_fp_ml_")
    if not real and not fp_ml:
        return float(np.mean(phantom)) if phantom else None
    score = float(np.mean(real)) if real else 0.0
    if phantom:
        score += PHANTOM_WEIGHT * float(np.mean(phantom))
    return score - min(FP_PENALTY_MAX, sum(fp_ml) / FP_ML_PER_POINT)
