"""Training samples generated on the fly by the domain-randomised generator (:mod:`flare_seg.synth.domain_rand`).

Sample ``i`` draws its label map, deformation, appearance and imaging from
``default_rng([seed, GEN_STREAM, i])`` and then goes through the ordinary sampler
(:class:`~flare_seg.training.data.SegSampler` / :class:`~flare_seg.training.data.LocSampler`: network grid,
crop, augmentation from ``default_rng([seed, i])``), so a resumed run sees exactly the samples an
uninterrupted one would. Every sample is a new body: the pool holds label maps, not images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from flare_seg.config import DataConfig, LocalizerConfig, SegmenterConfig, TrainConfig
from flare_seg.synth.domain_rand import DomainRandConfig, generate
from flare_seg.synth.label_maps import LabelMap, bundled_label_maps, phantom_label_map
from flare_seg.training.data import LocSampler, Sample, SegSampler, TrainCase

log = logging.getLogger(__name__)

GEN_STREAM, PHANTOM_MAP_STREAM = 3, 4


@dataclass
class GeneratedPool:
    """What generated samples are drawn from: label maps, the generator's settings, optional cached cases."""

    maps: list[LabelMap]
    config: DomainRandConfig
    cached: list[TrainCase] = field(default_factory=list)
    cached_fraction: float = 0.0

    def __len__(self) -> int:
        return len(self.maps) + len(self.cached)

    def make_sampler(self, model_config, train_config: TrainConfig) -> GeneratedSampler:
        return GeneratedSampler(self, model_config, train_config)


def phantom_maps(count: int, seed: int, net: str) -> list[LabelMap]:
    """``count`` parametric phantom tissue maps: 3 mm abdomens for the SCN, 5 mm trunks for the localizer."""
    shape, spacing = ((100, 128, 128), (3.0, 3.0, 3.0)) if net == "seg" else ((110, 80, 80), (5.0, 5.0, 5.0))
    maps = []
    for i in range(count):
        rng = np.random.default_rng([seed, PHANTOM_MAP_STREAM, i])
        shift = (float(rng.uniform(-60.0, 60.0)), 0.0, 0.0) if net == "seg" else (float(rng.uniform(-40, 120)), 0, 0)
        maps.append(phantom_label_map(rng, f"phantom_{i:03d}", shape, spacing, shift))
    return maps


def make_pool(data: DataConfig, seed: int, net: str, cached: list[TrainCase]) -> GeneratedPool:
    """The pool of a run whose data config asks for generation (``data.domain_rand`` set)."""
    maps = bundled_label_maps() + phantom_maps(data.generated_phantom_maps, seed, net)
    log.info("generator pool: %d label maps (%s), %d cached cases at %.0f %%", len(maps),
             ", ".join(m.name for m in maps[:8]) + (" ..." if len(maps) > 8 else ""), len(cached),
             100 * data.generated_cached_fraction * bool(cached))
    return GeneratedPool(maps, data.domain_rand, cached, data.generated_cached_fraction if cached else 0.0)


class GeneratedSampler:
    """Sampler interface of :mod:`flare_seg.training.data` over freshly generated cases."""

    def __init__(self, pool: GeneratedPool, model_config, train: TrainConfig):
        if not pool.maps and not pool.cached:
            raise ValueError("no label maps and no cached cases to sample from")
        if not isinstance(model_config, LocalizerConfig | SegmenterConfig):
            raise ValueError(f"cannot train a model of config type {type(model_config).__name__}")
        self.pool, self.model_config, self.train = pool, model_config, train

    def case(self, index: int) -> TrainCase:
        """The training case behind sample ``index`` (generated, or one of the cached cases)."""
        rng = np.random.default_rng([self.train.seed, GEN_STREAM, index])
        if self.pool.cached and (not self.pool.maps or rng.random() < self.pool.cached_fraction):
            return self.pool.cached[int(rng.integers(len(self.pool.cached)))]
        lm = self.pool.maps[int(rng.integers(len(self.pool.maps)))]
        g = generate(rng, lm, self.pool.config)
        return TrainCase(f"gen_{index}_{lm.name}", g.image_hu, g.labels, g.spacing_mm)

    def sample(self, index: int, augment_data: bool = True) -> tuple[np.ndarray, np.ndarray]:
        drawn = self.draw(index, augment_data)
        return drawn.x, drawn.target

    def draw(self, index: int, augment_data: bool = True) -> Sample:
        case = self.case(index)
        if isinstance(self.model_config, LocalizerConfig):
            inner = LocSampler([case], self.train, self.model_config.preprocess)
        else:
            inner = SegSampler([case], self.train, self.model_config.preprocess, self.model_config.num_labels)
        return inner.draw(index, augment_data)
