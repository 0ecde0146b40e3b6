"""Frozen configuration dataclasses with a JSON round trip.

A model's configuration (network *and* preprocessing) is saved as JSON beside its weights, so
inference always preprocesses exactly as training did and ``build_model(config)`` rebuilds the
network. Sizes are ``(z, y, x)`` like every array in the project; the paper quotes them ``x × y × z``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from flare_seg import __version__
from flare_seg.synth.domain_rand import DomainRandConfig


@dataclass(frozen=True)
class IntensityConfig:
    """HU / ``scale_hu`` clipped to ``clip``; voxels outside the image are ``pad_hu`` (seed 002, 2.1)."""

    scale_hu: float = 2048.0
    clip: tuple[float, float] = (-1.0, 1.0)
    pad_hu: float = -1024.0


@dataclass(frozen=True)
class GridConfig:
    """The network grid: target spacing and the valid sizes ``min..max`` in steps of ``multiple``.

    If the image region does not fit ``size_max_zyx`` at ``spacing_mm``, the spacing grows
    (isotropically, so shapes keep their proportions) until it does.
    """

    spacing_mm: float
    size_min_zyx: tuple[int, int, int]
    size_max_zyx: tuple[int, int, int]
    size_multiple: int

    def __post_init__(self) -> None:
        for lo, hi in zip(self.size_min_zyx, self.size_max_zyx, strict=True):
            if lo % self.size_multiple or hi % self.size_multiple or lo > hi:
                raise ValueError(
                    f"grid sizes {self.size_min_zyx}..{self.size_max_zyx} must be multiples of "
                    f"{self.size_multiple} with min <= max"
                )


@dataclass(frozen=True)
class LocPreprocessConfig:
    """Localization input: whole image, Gaussian sigma 3 mm, linear resampling to 6 mm.

    Valid sizes x, y in {32, 48, 64, 80} and z in {32, 48, ..., 256}: five levels of ×2
    pooling need multiples of 16.
    """

    grid: GridConfig = GridConfig(6.0, (32, 32, 32), (256, 80, 80), 16)
    smoothing_sigma_mm: float = 3.0
    intensity: IntensityConfig = IntensityConfig()


@dataclass(frozen=True)
class SegPreprocessConfig:
    """Segmentation input: foreground box + up to ``margin_voxels`` (of the 2 mm grid) per side, at 2 mm.

    Valid sizes are multiples of 32 (×4 pooling feeding a 4-level spatial U-Net) from 32 up to
    x 160, y 128, z 160.
    """

    grid: GridConfig = GridConfig(2.0, (32, 32, 32), (160, 128, 160), 32)
    margin_voxels: int = 16
    largest_component_only: bool = False
    intensity: IntensityConfig = IntensityConfig()


@dataclass(frozen=True)
class NetworkConfig:
    """One U-Net: ``levels`` levels of ``filters`` filters (constant across levels)."""

    levels: int = 5
    filters: int = 32
    dropout_rate: float = 0.1
    leaky_alpha: float = 0.1


@dataclass(frozen=True)
class LocalizerConfig:
    """The localization U-Net (637,474 parameters with the defaults) and its preprocessing."""

    network: NetworkConfig = NetworkConfig(levels=5, filters=32)
    num_labels: int = 2
    preprocess: LocPreprocessConfig = LocPreprocessConfig()
    dtype_policy: str = "float32"


@dataclass(frozen=True)
class SegmenterConfig:
    """The reduced SCN (1,270,090 parameters with the defaults) and its preprocessing.

    ``combination``: how sigmoid(local) and sigmoid(spatial) make the final probability.
    ``"multiply"`` is the SCN papers' product (the spatial net can only suppress spurious local
    responses, never invent organs); ``"entropy_blend"`` follows the authors' FLARE code and
    weights the two by the spatial net's normalised binary entropy.

    ``architecture``: ``"scn"`` (seed 002), ``"unet"`` (the SCN's local U-Net alone, the baseline)
    or ``"attention_unet"`` (the same with additive attention gates on every skip, seed 003); the
    last two use ``local`` and ignore ``spatial``/``combination``. ``anatomical_attention`` adds a
    second input channel, the signed distance to the coarse organ mask (seed 000;
    :mod:`flare_seg.anatomical`). ``presence_head`` adds seed 001's attention module, any
    architecture: a small classification head on the local U-Net's coarsest features predicts
    which organs the input contains and scales their probabilities (:mod:`flare_seg.models.presence`).
    A ``config.json`` written before these keys existed loads as the plain SCN.
    """

    local: NetworkConfig = NetworkConfig(levels=5, filters=32)
    spatial: NetworkConfig = NetworkConfig(levels=4, filters=16)
    spatial_downsample: int = 4
    num_labels: int = 5
    combination: str = "multiply"
    preprocess: SegPreprocessConfig = SegPreprocessConfig()
    dtype_policy: str = "float32"
    architecture: str = "scn"
    anatomical_attention: bool = False
    presence_head: bool = False

    ARCHITECTURES = ("scn", "unet", "attention_unet")

    def __post_init__(self) -> None:
        if self.combination not in ("multiply", "entropy_blend"):
            raise ValueError(f"combination must be 'multiply' or 'entropy_blend', got {self.combination!r}")
        if self.architecture not in self.ARCHITECTURES:
            raise ValueError(f"architecture must be one of {self.ARCHITECTURES}, got {self.architecture!r}")

    @property
    def input_channels(self) -> int:
        """Image, plus the anatomical distance map when ``anatomical_attention``."""
        return 2 if self.anatomical_attention else 1


@dataclass(frozen=True)
class AugmentConfig:
    """Random spatial and intensity augmentation (seed 002 Table 3; ranges of the authors' config).

    No left-right mirroring: it would swap the liver and spleen sides.
    """

    translation_mm: float = 20.0
    rotation_rad: float = 0.35
    scale: float = 0.2
    scale_per_axis: float = 0.1
    elastic_grid: int = 8
    elastic_mm: float = 15.0
    intensity_shift: float = 0.2
    intensity_scale: float = 0.2
    enabled: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (seed 002 section 4.2: Adam 1e-4, batch 1, constant schedule, EMA)."""

    steps: int = 100_000
    learning_rate: float = 1e-4
    beta_1: float = 0.9
    beta_2: float = 0.999
    ema_decay: float = 0.999
    ema_warmup: bool = True
    loss_lambda_local: float = 1.0
    loss_lambda_spatial: float = 1.0
    mixed_precision: bool = False
    clipnorm: float | None = None
    weight_decay: float = 0.0
    checkpoint_every: int = 500
    validate_every: int = 500
    seed: int = 0
    #: Fixed training grid size (z, y, x); None trains on the whole ROI / image at its valid size
    #: (the paper). A compute compromise on CPU: the networks then see random crops of the same
    #: grid (same spacing), and a fixed size avoids re-tracing the train step per size.
    train_size_zyx: tuple[int, int, int] | None = None
    augment: AugmentConfig = AugmentConfig()
    workers: int = 1
    folds: int = 4
    fold: int | None = None
    #: Honour ``dataset.json`` annotations (seed 001): organs a case does not label are unknown,
    #: merged into the background before the loss (re-calibration) and left out of Dice terms.
    #: False treats them as background (the naive baseline). No effect on fully labelled data.
    partial_labels: bool = True
    #: How the segmenter's losses treat an organ a case does not annotate: ``"recalibrate"`` (seed
    #: 001: merged into the background) or ``"self"`` (its channel is trained only where it is known
    #: to be absent; the background's target on label-0 voxels is the network's own belief; see
    #: :mod:`flare_seg.training.partial`). The localizer's softmax always uses re-calibration: its
    #: merged background is ``1 - sum p_annotated``, which does not favour background over an unknown organ.
    partial_mode: str = "recalibrate"
    #: ``"paper"``: generalized Dice (+ CE for the SCN), seed 002. ``"hybrid"``: seed 001's batch
    #: Dice x ``hybrid_dice_weight`` + spatially balanced focal loss x ``hybrid_focal_weight``
    #: with focusing exponent ``focal_gamma``, in place of the generalized Dice term.
    loss: str = "paper"
    hybrid_dice_weight: float = 1.0
    hybrid_focal_weight: float = 1.0
    focal_gamma: float = 2.0
    #: Samples per optimizer step, over all devices together (the *global* batch; the paper: 1).
    #: Step ``s`` trains on samples ``s * batch_size .. s * batch_size + batch_size - 1``, so batch 1
    #: reads the same samples as runs saved before this field existed (their JSON loads with the default).
    batch_size: int = 1
    #: Multi-device strategy (``"mirrored"``; None: one device). Saved with the run, so ``--resume``
    #: continues on the same strategy; ``--distribute none`` on resume turns it off.
    distribute: str | None = None
    #: Weight of the presence head's binary cross-entropy (seed 001's classification term, whose
    #: weight the paper sets to 1 in its joint phase); used only by a ``presence_head`` segmenter.
    presence_weight: float = 1.0
    #: An organ counts as present in a training sample when at least this volume of it lies inside
    #: the sample's grid (voxels on the network grid x their volume).
    presence_min_ml: float = 0.5

    def __post_init__(self) -> None:
        if self.loss not in ("paper", "hybrid"):
            raise ValueError(f"loss must be 'paper' or 'hybrid', got {self.loss!r}")
        if self.partial_mode not in ("recalibrate", "self"):
            raise ValueError(f"partial_mode must be 'recalibrate' or 'self', got {self.partial_mode!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.batch_size > 1 and self.train_size_zyx is None:  # whole-ROI grids differ in size per sample
            raise ValueError(f"batch_size {self.batch_size} needs train_size_zyx (--train-size): "
                             "the samples of one batch must share a grid size")
        if self.presence_weight < 0 or self.presence_min_ml < 0:
            raise ValueError(f"presence_weight and presence_min_ml must be >= 0, got {self.presence_weight}, "
                             f"{self.presence_min_ml}")


@dataclass(frozen=True)
class DataConfig:
    """What a training run trains and validates on; saved as ``data.json`` so ``--resume`` needs no flags.

    ``data``/``val_data``: dataset folders or JSON lists (paths as strings); ``synthetic`` phantoms
    are drawn with ``synthetic_shape_zyx``/``synthetic_spacing_mm`` (varied per phantom when
    ``synthetic_vary``), a ``synthetic_chest`` share of them viewing the chest only.
    """

    data: tuple[str, ...] = ()
    label_map: str | None = None
    synthetic: int = 0
    synthetic_shape_zyx: tuple[int, int, int] = (64, 160, 160)
    synthetic_spacing_mm: tuple[float, float, float] = (5.0, 2.5, 2.5)
    synthetic_vary: bool = False
    synthetic_chest: float = 0.0
    val_data: str | None = None
    val_synthetic: int = 0
    #: Sampling weight of each ``data`` folder (same order); empty = every case equally likely.
    #: A folder's cases share its weight, so a small folder is not drowned by a large one.
    data_weights: tuple[float, ...] = ()
    #: SynthSeg-style generation (:mod:`flare_seg.synth.domain_rand`) from the bundled label maps when set;
    #: cached cases (``data``, ``synthetic``) are then mixed in at ``generated_cached_fraction``.
    domain_rand: DomainRandConfig | None = None
    generated_phantom_maps: int = 0  # parametric phantom tissue maps added to the label-map pool
    generated_cached_fraction: float = 0.2
    #: JSON list of real validation CTs ({"name", "image", "label" or null, "organs"}), see
    #: :mod:`flare_seg.training.real_val`; scored at every validation and used for best-checkpoint selection.
    real_val: str | None = None
    #: A localizer model folder: partially annotated cases train the segmenter in the box it finds
    #: on them, the box they get at inference, not the box of their annotated organs alone
    #: (:mod:`flare_seg.training.roi`). None: the box of their labels.
    partial_roi_localizer: str | None = None

    #: Keys of the flat ``data.json`` written before this dataclass existed.
    LEGACY_KEYS = {"synthetic_shape": "synthetic_shape_zyx", "synthetic_spacing": "synthetic_spacing_mm"}


CONFIG_KINDS: dict[str, type] = {"localizer": LocalizerConfig, "segmenter": SegmenterConfig, "train": TrainConfig,
                                 "data": DataConfig}


def _from_value(tp, value):
    """Rebuild ``value`` (parsed JSON) as type ``tp`` (dataclass, tuple, optional, or plain)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _from_value(args[0], value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_value(args[0], v) for v in value)
        return tuple(_from_value(a, v) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type, data: dict):
    """Build dataclass ``cls`` from a dict, rejecting unknown keys (a typo should not pass silently)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    return cls(**{k: _from_value(hints[k], v) for k, v in data.items()})


def to_dict(config) -> dict:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def replace(config, **changes):
    """``dataclasses.replace`` re-exported for convenience."""
    return dataclasses.replace(config, **changes)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`flare_seg.atomic.write_text`)."""
    from flare_seg.atomic import write_text

    write_text(path, text)


def save_config(config, path: str | os.PathLike, **extra) -> None:
    """Save a config as JSON: ``{"kind", "flare_seg_version", "config", **extra}``."""
    kinds = {cls: name for name, cls in CONFIG_KINDS.items()}
    if type(config) not in kinds:
        raise ValueError(f"cannot save config of type {type(config).__name__}")
    payload = {"kind": kinds[type(config)], "flare_seg_version": __version__, "config": to_dict(config)}
    payload.update(extra)
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def load_config(path: str | os.PathLike):
    """Load a config saved by :func:`save_config`; the ``kind`` field selects the dataclass."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    kind = payload.get("kind")
    if kind is None and isinstance(payload, dict) and "synthetic" in payload:  # flat data.json of older runs
        payload = {"kind": "data", "config": {DataConfig.LEGACY_KEYS.get(k, k): v for k, v in payload.items()}}
        kind = "data"
    if kind not in CONFIG_KINDS:
        raise ValueError(f"{path}: unknown config kind {kind!r}; expected one of {sorted(CONFIG_KINDS)}")
    try:
        return from_dict(CONFIG_KINDS[kind], payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid {kind} config ({err})") from None


__all__ = [
    "AugmentConfig", "DataConfig", "GridConfig", "IntensityConfig", "LocPreprocessConfig", "LocalizerConfig",
    "NetworkConfig", "SegPreprocessConfig", "SegmenterConfig", "TrainConfig",
    "from_dict", "load_config", "save_config", "to_dict", "replace", "atomic_write_text",
]
