"""Training data: dataset discovery, validated loading, caching, folds and the two samplers.

A case is cached once, in canonical orientation, cropped around the body and labels with a
margin, at original resolution; each training sample is then produced by *one* resampling that
applies the augmentation and the network spacing together (seed 002's approach). Sample ``i``
of a run is drawn from ``numpy.random.default_rng([seed, i])``, so data are identical whether a
run goes straight through or resumes, whatever the number of workers.

This module imports neither TensorFlow nor SimpleITK at module level: phantom training on the JAX
or PyTorch backend needs neither. Reading files (``load_case``) imports :mod:`flare_seg.io`.
"""

from __future__ import annotations

import abc
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flare_seg import labels as flare_labels
from flare_seg.config import LocPreprocessConfig, SegPreprocessConfig, TrainConfig, atomic_write_text
from flare_seg.geometry import Geometry, to_canonical
from flare_seg.naming import case_name
from flare_seg.preprocess import (
    GridRecord,
    bounding_box,
    clamp_padding,
    loc_record,
    one_hot,
    scale_intensity,
    seg_record,
    smooth_for_localizer,
)
from flare_seg.training import augment

log = logging.getLogger(__name__)

BODY_THRESHOLD_HU = -500.0


@dataclass
class TrainCase:
    """One training case in canonical orientation: HU image, FLARE labels (same shape), spacing (z, y, x)."""

    case_id: str
    image_hu: np.ndarray
    labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    #: Organ labels this case annotates (``dataset.json``); None = all. Others are unknown.
    annotated: tuple[int, ...] | None = None
    #: Relative sampling weight (its dataset's weight / its dataset's size).
    weight: float = 1.0
    #: The segmenter's training box (inclusive voxel bounds ``(lo, hi)``) when it should not be the
    #: box of ``labels``: a partially annotated case's labels box only its annotated organs, so the
    #: segmenter would always see them centred in a small box, never as at inference, where the
    #: box holds all organs. None: the box of the labels (seed 002).
    roi: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
    #: Confident pseudo-labels of the organs a partially annotated case leaves unknown (same shape
    #: as ``labels``; :mod:`flare_seg.training.partial`): ``0`` no unknown organ here, an organ
    #: value that organ, :data:`~flare_seg.training.partial.PSEUDO_UNSURE` no answer. Read only on
    #: the case's label-0 voxels, and only by ``partial_mode="self"``. None: no pseudo-labels.
    pseudo: np.ndarray | None = None


# ----------------------------------------------------------------------------- discovery and loading


def find_pairs(source: str | Path) -> list[tuple[str, Path, Path]]:
    """``(case, image, label)`` triples from a FLARE/nnU-Net folder, a flat folder, or a JSON list of pairs.

    FLARE layout: ``imagesTr/<case>_0000.nii.gz`` + ``labelsTr/<case>.nii.gz``. Flat: both in one
    folder. JSON: ``[{"image": ..., "label": ...}, ...]`` or ``[[image, label], ...]`` (relative
    paths are relative to the JSON file).
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: dataset not found")
    if source.is_file():
        return _pairs_from_json(source)
    images_dir = source / "imagesTr" if (source / "imagesTr").is_dir() else source
    labels_dir = source / "labelsTr" if (source / "labelsTr").is_dir() else source
    pairs = []
    for image in sorted(images_dir.glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        label = labels_dir / f"{case}.nii.gz"
        if not label.exists():
            raise FileNotFoundError(f"{image}: no label file {label}")
        pairs.append((case, image, label))
    if not pairs:
        raise ValueError(f"{source}: no training images (<case>_0000.nii.gz) found")
    return pairs


def _pairs_from_json(path: Path) -> list[tuple[str, Path, Path]]:
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of image/label pairs, got {type(entries).__name__}")
    pairs = []
    for i, entry in enumerate(entries):
        try:
            image, label = (entry["image"], entry["label"]) if isinstance(entry, dict) else entry
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: entry {i} is not {{'image': ..., 'label': ...}} or [image, label]") from None
        image, label = (p if Path(p).is_absolute() else path.parent / p for p in (image, label))
        pairs.append((case_name(image), Path(image), Path(label)))  # the rule inference names outputs by
    return pairs


def load_case(case_id: str, image_path, label_path, label_map=None, margin_mm: float = 40.0) -> TrainCase:
    """Read, validate (same grid, labels 0-4), reorient and crop one case."""
    from flare_seg import io

    volume = io.read_ct(image_path)
    labels, label_geometry, _ = io.read_image(label_path)
    problem = volume.geometry.mismatch(label_geometry)
    if problem:
        raise ValueError(f"{case_id}: image and label grids differ: {problem} ({label_path})")
    if label_map is not None:
        labels = flare_labels.map_labels(labels, label_map)
    elif labels.size and (labels.min() < 0 or labels.max() > 4):
        raise ValueError(f"{label_path}: label values {labels.min()}..{labels.max()} outside 0-4 "
                         "(use a label mapping for AMOS/TotalSegmentator label sets)")
    return make_case(case_id, volume.array, labels.astype(np.uint8), volume.geometry, margin_mm)


def make_case(case_id: str, image_hu, labels, geometry: Geometry, margin_mm: float = 40.0) -> TrainCase:
    """Canonical orientation + crop to body and labels with ``margin_mm`` (a cached training case)."""
    image, canon, _ = to_canonical(clamp_padding(np.asarray(image_hu)), geometry)
    labels, _, _ = to_canonical(np.asarray(labels), geometry)
    crop = body_crop(image, labels, canon.spacing_mm, margin_mm)
    image = np.ascontiguousarray(image[crop])
    image = image.astype(np.int16) if np.issubdtype(image.dtype, np.integer) else image.astype(np.float32)
    return TrainCase(case_id, image, np.ascontiguousarray(labels[crop], dtype=np.uint8), canon.spacing_mm)


def body_crop(image, labels, spacing_mm, margin_mm) -> tuple[slice, slice, slice]:
    """Slices covering voxels above -500 HU (the body) and all labels, plus a margin."""
    box = bounding_box((image > BODY_THRESHOLD_HU) | (labels > 0))
    if box is None:
        return (slice(None),) * 3
    margin = [int(math.ceil(margin_mm / s)) for s in spacing_mm]
    return tuple(slice(max(lo - m, 0), min(hi + m + 1, n))
                 for lo, hi, m, n in zip(box[0], box[1], margin, image.shape, strict=True))


# ----------------------------------------------------------------------------- folds


def make_folds(case_ids: list[str], k: int, seed: int) -> dict:
    """A seeded split of ``case_ids`` into ``k`` folds: ``{"seed", "folds": [[case, ...], ...]}``."""
    if k < 2 or k > len(case_ids):
        raise ValueError(f"cannot split {len(case_ids)} cases into {k} folds")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    folds = [sorted(case_ids[i] for i in order[f::k]) for f in range(k)]
    return {"seed": seed, "folds": folds}


def save_folds(folds: dict, path) -> None:
    atomic_write_text(path, json.dumps(folds, indent=2) + "\n")


def split_fold(cases: list[TrainCase], folds: dict, fold: int) -> tuple[list[TrainCase], list[TrainCase]]:
    """Training and validation cases of fold ``fold`` (0-based)."""
    if not 0 <= fold < len(folds["folds"]):
        raise ValueError(f"fold {fold} out of range 0..{len(folds['folds']) - 1}")
    held = set(folds["folds"][fold])
    return [c for c in cases if c.case_id not in held], [c for c in cases if c.case_id in held]


# ----------------------------------------------------------------------------- samplers


def _crop_record(record: GridRecord, size_zyx, rng: np.random.Generator | None) -> GridRecord:
    """A ``size_zyx`` grid at the same spacing inside (or around) ``record``'s grid.

    The crop centre is drawn uniformly where the crop stays inside the region (the centre when
    ``rng`` is None); a region smaller than the crop is centred in it.
    """
    size = np.asarray(size_zyx)
    full = np.asarray(record.output_shape)
    slack = np.maximum(full - size, 0) / 2.0
    offset = rng.uniform(-slack, slack) if rng is not None else np.zeros(3)
    centre_out = (full - 1) / 2.0 + offset
    centre_in = np.asarray(record.start) + centre_out * np.asarray(record.step)
    start = centre_in - (size - 1) / 2.0 * np.asarray(record.step)
    return GridRecord(record.input_shape, tuple(int(n) for n in size), record.spacing_mm,
                      tuple(float(v) for v in start), record.step)


@dataclass(frozen=True)
class Sample:
    """One sample: network input, one-hot target and the volume of one network-grid voxel."""

    x: np.ndarray
    target: np.ndarray
    voxel_ml: float


def cell_labels(labels: np.ndarray, spacing_mm, cell_mm) -> tuple[np.ndarray, np.ndarray]:
    """(array, index shift): ``labels`` padded by half a ``cell_mm`` cell per side, where every voxel
    takes the highest label within one cell around it (a grey maximum filter of the cell's size in
    voxels). Nearest-neighbour sampling of it at (index + shift) onto a grid of ``cell_mm`` cells
    finds an organ wherever one lies inside a cell, also in a cell centred just outside the image
    (a 3-slice CT lies between two 6 mm cell centres)."""
    from scipy import ndimage

    size = np.array([max(1, int(round(c / s))) for c, s in zip(cell_mm, spacing_mm, strict=True)])
    if size.max() == 1 or not labels.any():
        return labels, np.zeros(3, np.float32)
    pad = size // 2
    padded = np.pad(labels, [(int(p), int(p)) for p in pad])
    return ndimage.maximum_filter(padded, size=tuple(int(v) for v in size), mode="constant", cval=0), \
        pad.astype(np.float32)


class _Sampler(abc.ABC):
    """Shared sampling: a base grid per case, optional fixed-size crop, one warp for image and labels."""

    num_labels: int

    def __init__(self, cases: list[TrainCase], train: TrainConfig, intensity):
        if not cases:
            raise ValueError("no training cases")
        self.cases = cases
        self.train = train
        self.intensity = intensity

    @abc.abstractmethod
    def base_record(self, case_index: int) -> GridRecord:
        """The network grid of a case before cropping and augmentation."""

    @abc.abstractmethod
    def image_source(self, case_index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(array to sample, scale, offset): the array's index = (original index - offset) / scale."""

    def label_source(self, case_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(label array, index shift): the target is sampled from the array, nearest neighbour, at the
        image's ``coords`` + shift."""
        return self.cases[case_index].labels, np.zeros(3, np.float32)

    def target(self, labels: np.ndarray) -> np.ndarray:
        return one_hot(labels, self.num_labels)

    def sample(self, index: int, augment_data: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index``: ``(image (Z, Y, X) float32, one-hot target (Z, Y, X, C))``.

        With ``augment_data=False`` the case is ``index % len(cases)`` and the crop is centred
        (deterministic validation samples).
        """
        drawn = self.draw(index, augment_data)
        return drawn.x, drawn.target

    def draw(self, index: int, augment_data: bool = True) -> Sample:
        """:meth:`sample` with the grid's voxel volume (what the presence target needs)."""
        rng = np.random.default_rng([self.train.seed, index]) if augment_data else None
        case_index = self._draw_case(rng) if rng is not None else index % len(self.cases)
        case = self.cases[case_index]
        record = self.base_record(case_index)
        if self.train.train_size_zyx is not None:
            record = _crop_record(record, self.train.train_size_zyx, rng)
        cfg = self.train.augment if augment_data else augment.AugmentConfig(enabled=False)
        transform = augment.random_transform(rng, cfg) if rng is not None else augment.SpatialTransform.identity()
        coords = augment.sample_coordinates(record, case.spacing_mm, transform)
        label_array, shift = self.label_source(case_index)
        label_coords = coords + shift[:, None, None, None] if shift.any() else coords  # no copy when unshifted
        labels = augment.warp(label_array, label_coords, order=0, cval=0)
        image, scale, offset = self.image_source(case_index)
        if scale is not None:
            coords = (coords - offset[:, None, None, None]) / scale[:, None, None, None]
        x = augment.warp(image, coords, order=1, cval=self.intensity.pad_hu)
        x = scale_intensity(x, self.intensity)
        if rng is not None:
            x = augment.augment_intensity(rng, x, cfg, self.intensity.clip)
        x = self.extra_channels(x, case_index, coords, rng)
        return Sample(x, self.case_target(labels, case_index), float(np.prod(record.spacing_mm)) / 1000.0)

    def _draw_case(self, rng: np.random.Generator) -> int:
        """A case index: uniform, or by the cases' ``weight`` when they differ (``--data`` mixing)."""
        weights = np.array([case.weight for case in self.cases], dtype=np.float64)
        if np.all(weights == weights[0]):
            return int(rng.integers(len(self.cases)))
        return int(rng.choice(len(self.cases), p=weights / weights.sum()))

    def extra_channels(self, x: np.ndarray, case_index: int, coords: np.ndarray, rng) -> np.ndarray:
        """Hook for extra input channels sampled on the same ``coords`` (anatomical attention)."""
        return x

    def case_target(self, labels: np.ndarray, case_index: int) -> np.ndarray:
        """Hook for per-case targets (partial annotations); the one-hot target by default."""
        return self.target(labels)


class SegSampler(_Sampler):
    """SCN samples: the ground-truth box of all organs (+ margin) at 2 mm (seed 002, Table 3)."""

    def __init__(self, cases, train: TrainConfig, preprocess: SegPreprocessConfig, num_labels: int = 5):
        super().__init__(cases, train, preprocess.intensity)
        self.preprocess = preprocess
        self.num_labels = num_labels
        self._records = {}

    def base_record(self, case_index: int) -> GridRecord:
        if case_index not in self._records:
            case = self.cases[case_index]
            box = case.roi if case.roi is not None else bounding_box(case.labels > 0)
            if box is None:  # no organ: the whole cached region
                box = ((0, 0, 0), tuple(n - 1 for n in case.labels.shape))
            self._records[case_index] = seg_record(box, case.labels.shape, case.spacing_mm, self.preprocess)
        return self._records[case_index]

    def image_source(self, case_index):
        return self.cases[case_index].image_hu, None, None


class LocSampler(_Sampler):
    """Localizer samples: the whole image at 6 mm, foreground = any organ (two channels).

    The image is cached smoothed and block-averaged exactly as :func:`flare_seg.preprocess.loc_input`
    does it, so the warp from that cache is the only resampling.

    A grid cell is foreground when an organ lies *anywhere* in it (:func:`cell_labels`), not only at
    its centre: the localizer's job is the box, and with centre sampling an organ thinner than a
    6 mm cell (a 3 mm liver dome, a 2 mm slab) vanishes from the target, so the localizer was
    taught to find nothing there.
    """

    num_labels = 2

    def __init__(self, cases, train: TrainConfig, preprocess: LocPreprocessConfig):
        super().__init__(cases, train, preprocess.intensity)
        self.preprocess = preprocess
        self._smoothed = [self._smooth(case) for case in cases]
        self._cell_labels: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def label_source(self, case_index: int) -> tuple[np.ndarray, np.ndarray]:
        if case_index not in self._cell_labels:
            case = self.cases[case_index]
            self._cell_labels[case_index] = cell_labels(case.labels, case.spacing_mm,
                                                        self.base_record(case_index).spacing_mm)
        return self._cell_labels[case_index]

    def _smooth(self, case: TrainCase):
        small, factors = smooth_for_localizer(case.image_hu, case.spacing_mm, self.preprocess.smoothing_sigma_mm)
        return small, factors.astype(np.float32), ((factors - 1) / 2.0).astype(np.float32)

    def base_record(self, case_index: int) -> GridRecord:
        case = self.cases[case_index]
        return loc_record(case.labels.shape, case.spacing_mm, self.preprocess)

    def image_source(self, case_index):
        return self._smoothed[case_index]

    def target(self, labels):
        return one_hot((labels > 0).astype(np.uint8), 2)
