"""Samplers of the seeds' options: partial annotations (seed 001) and anatomical attention (seed 000).

They extend :class:`~flare_seg.training.data.SegSampler` / ``LocSampler`` through their two hooks
(``case_target``, ``extra_channels``), so cropping, augmentation and the seeded sample order stay
those of the paper's samplers. NumPy/SciPy only.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from flare_seg import anatomical
from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig
from flare_seg.training import augment
from flare_seg.training.data import LocSampler, SegSampler, TrainCase
from flare_seg.training.partial import keep_annotated, partial_target, with_pseudo

log = logging.getLogger(__name__)


def restricted(cases: list[TrainCase]) -> list[TrainCase]:
    """Cases with unannotated organs' labels cleared, so boxes and targets see annotated organs only."""
    return [case if case.annotated is None else
            dataclasses.replace(case, labels=keep_annotated(case.labels, case.annotated)) for case in cases]


class PartialSegSampler(SegSampler):
    """SCN / U-Net samples whose targets mark unannotated organs unknown, optionally with the
    anatomical channel: the ground-truth organ mask's signed distance, warped with the sample's
    own coordinates plus a random shift and dilation/erosion."""

    def __init__(self, cases, train: TrainConfig, config: SegmenterConfig):
        super().__init__(restricted(cases), train, config.preprocess, config.num_labels)
        boxed_alone = sum(case.annotated is not None and case.roi is None for case in cases)
        if boxed_alone:
            log.warning("%d partially annotated case(s) train in the box of their annotated organs only, not the "
                        "all-organ box they get at inference (it cost one-organ phantoms most of their kidney DSC); "
                        "give --partial-roi-localizer DIR to train them in a localizer's box", boxed_alone)
        self.anatomical = config.anatomical_attention
        self._distance: dict[int, np.ndarray] = {}
        self._coded: dict[int, np.ndarray] = {}
        with_pseudo_labels = sum(case.pseudo is not None for case in cases)
        if with_pseudo_labels and train.partial_mode != "self":
            log.warning("%d case(s) carry pseudo-labels, which only partial_mode='self' reads; they are ignored",
                        with_pseudo_labels)

    def label_source(self, case_index):
        """The case's labels, with its confident pseudo-labels coded in (:func:`with_pseudo`) when
        it has them and ``partial_mode="self"`` reads them (the other modes would ignore them)."""
        case = self.cases[case_index]
        if case.pseudo is None or self.train.partial_mode != "self" or not self.train.partial_labels:
            return super().label_source(case_index)
        if case_index not in self._coded:
            self._coded[case_index] = with_pseudo(case.labels, case.pseudo, case.annotated)
        return self._coded[case_index], np.zeros(3, np.float32)

    def case_target(self, labels, case_index):
        return partial_target(labels, self.num_labels, self.cases[case_index].annotated, self.train.partial_labels)

    def _distance_map(self, case_index: int) -> np.ndarray:
        if case_index not in self._distance:
            case = self.cases[case_index]
            self._distance[case_index] = anatomical.signed_distance_mm(case.labels > 0, case.spacing_mm)
        return self._distance[case_index]

    def extra_channels(self, x, case_index, coords, rng):
        if not self.anatomical:
            return x
        shift, offset_mm = anatomical.perturbation(rng, self.cases[case_index].spacing_mm)
        distance = augment.warp(self._distance_map(case_index), coords + shift[:, None, None, None], order=1,
                                cval=anatomical.CLIP * anatomical.SCALE_MM)
        return anatomical.with_channel(x, anatomical.to_channel(distance - offset_mm))


class PartialLocSampler(LocSampler):
    """Localizer samples with one channel per organ (``num_labels`` 5), unannotated organs unknown.

    The two-channel localizer (foreground = any organ) cannot tell "unannotated organ" from
    background, so a case without a kidney label would teach it that the kidneys are background
    and its box would learn to leave them out. With one channel per organ, re-calibration merges
    the unknown organs into the background before the loss, and the box (argmax > 0) still
    covers every organ."""

    def __init__(self, cases, train: TrainConfig, config: LocalizerConfig):
        super().__init__(restricted(cases), train, config.preprocess)
        self.num_labels = config.num_labels

    def case_target(self, labels, case_index):
        return partial_target(labels, self.num_labels, self.cases[case_index].annotated, self.train.partial_labels)


def make_sampler(model_config, train_config: TrainConfig, cases: list[TrainCase]):
    """The sampler of a model config (paper samplers when no option needs more)."""
    if isinstance(model_config, LocalizerConfig):
        if model_config.num_labels > 2:
            return PartialLocSampler(cases, train_config, model_config)
        if any(case.annotated is not None for case in cases):
            log.warning("partially annotated cases with a two-label localizer: unannotated organs count as "
                        "background and the box may leave them out; use a per-organ localizer (--per-organ)")
        return LocSampler(cases, train_config, model_config.preprocess)
    if isinstance(model_config, SegmenterConfig):
        return PartialSegSampler(cases, train_config, model_config)
    raise ValueError(f"cannot train a model of config type {type(model_config).__name__}")
