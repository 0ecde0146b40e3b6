"""The segmenter's training box of partially annotated cases, from a localizer (TensorFlow engine).

A case whose ``dataset.json`` leaves organs unannotated has labels that box only its annotated
organs, so the segmenter would train on them centred in a small box, while at inference it gets
the localizer's box of all organs. :func:`localizer_rois` gives such cases the box a localizer
finds on them, the box they would get at inference (joined with the annotated organs' own box,
so no labelled voxel falls outside). Fully annotated cases keep the box of their labels (seed 002).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flare_seg.preprocess import bounding_box, box_in_input, loc_input

log = logging.getLogger(__name__)


def joined(a, b):
    """The smallest box holding boxes ``a`` and ``b`` (either may be None)."""
    if a is None or b is None:
        return a if b is None else b
    return (tuple(int(v) for v in np.minimum(a[0], b[0])), tuple(int(v) for v in np.maximum(a[1], b[1])))


def localizer_rois(cases: list, loc_dir: str | Path, progress: bool = True) -> list:
    """``cases`` with each partially annotated one's ``roi`` set to the localizer's box on it."""
    from flare_seg.config import LocalizerConfig
    from flare_seg.predict import load_model

    partial = [i for i, case in enumerate(cases) if case.annotated is not None and case.roi is None]
    if not partial:
        return cases
    loc = load_model(loc_dir, LocalizerConfig)
    out = list(cases)
    for i in tqdm(partial, desc="localizer boxes", disable=not progress):
        case = cases[i]
        x, record = loc_input(case.image_hu, case.spacing_mm, loc.config.preprocess)
        logits = np.asarray(loc.predict(x[None, ..., None])["logits"][0])
        found = box_in_input(np.argmax(logits, axis=-1) > 0, record)
        if found is None:
            log.warning("%s: the localizer finds no organ; it trains in the box of its annotated organs", case.case_id)
        out[i] = dataclasses.replace(case, roi=joined(found, bounding_box(case.labels > 0)))
    log.info("%d partially annotated case(s) train in the localizer's box (%s)", len(partial), loc_dir)
    return out
