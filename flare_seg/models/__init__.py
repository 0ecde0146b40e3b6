"""Networks: ``build_model(config)`` rebuilds a network from its configuration dataclass."""

from __future__ import annotations

from flare_seg.config import LocalizerConfig, SegmenterConfig


def build_model(config):
    """Build the Keras model described by a :class:`LocalizerConfig` or :class:`SegmenterConfig`."""
    if isinstance(config, LocalizerConfig):
        from flare_seg.models.unet import build_localizer

        return build_localizer(config)
    if isinstance(config, SegmenterConfig) and config.architecture != "scn":
        from flare_seg.models.attention_unet import build_unet_segmenter

        return build_unet_segmenter(config)
    if isinstance(config, SegmenterConfig):
        from flare_seg.models.scn import build_scn

        return build_scn(config)
    raise ValueError(f"no model for config of type {type(config).__name__}")


def count_params(model) -> int:
    return int(sum(int(w.numpy().size) if hasattr(w, "numpy") else int(w.size) for w in model.trainable_weights))
