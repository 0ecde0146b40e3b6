"""Which outputs a network trains and with which losses, for every architecture and loss option.

The SCN trains ``prob`` (Dice term) + ``local`` and ``spatial`` (cross-entropy, seed 002 eq. 2);
the plain and attention U-Nets have no spatial part and train ``prob`` + ``local``; the localizer
trains its softmax ``logits``; a segmenter with the presence head also trains ``presence``
(masked binary cross-entropy, :mod:`flare_seg.training.presence`). Every loss is the partial-label
version of :mod:`flare_seg.training.partial` (``TrainConfig.partial_mode`` picks the segmenter's),
which equals the paper's on fully annotated data.
"""

from __future__ import annotations

from flare_seg.config import LocalizerConfig, TrainConfig
from flare_seg.training import partial, presence


def output_names(model_config) -> tuple[str, ...]:
    if isinstance(model_config, LocalizerConfig):
        return ("logits",)
    names = ("prob", "local") if model_config.architecture != "scn" else ("prob", "local", "spatial")
    return names + ((presence.OUTPUT,) if model_config.presence_head else ())


def sample_targets(sampler, index: int, names: tuple[str, ...], train: TrainConfig):
    """``(x, {output: target})`` of training sample ``index``: the one-hot target for every output,
    and for ``presence`` the per-organ target of :func:`flare_seg.training.presence.presence_target`
    (which needs the sample's voxel volume, so only then is the sampler's ``draw`` used)."""
    if presence.OUTPUT not in names:
        x, y = sampler.sample(index)
        return x, {name: y for name in names}
    drawn = sampler.draw(index)
    targets = {name: drawn.target for name in names if name != presence.OUTPUT}
    targets[presence.OUTPUT] = presence.presence_target(drawn.target, drawn.voxel_ml, train.presence_min_ml)
    return drawn.x, targets


def _dice_options(train: TrainConfig) -> dict:
    return {"loss": train.loss, "dice_weight": train.hybrid_dice_weight, "focal_weight": train.hybrid_focal_weight,
            "gamma": train.focal_gamma}


def model_losses(model_config, train: TrainConfig) -> tuple[dict, dict]:
    """``(losses, loss_weights)`` dicts keyed by output name, for ``model.compile``."""
    if isinstance(model_config, LocalizerConfig):
        return {"logits": partial.softmax_term(**_dice_options(train))}, {"logits": 1.0}
    self_mode = train.partial_mode == "self"
    cross_entropy = partial.self_target_sigmoid_cross_entropy if self_mode else partial.partial_sigmoid_cross_entropy
    recalibrate = partial.recalibrate_self if self_mode else partial.recalibrate_independent
    losses = {"prob": partial.dice_term(recalibrate, **_dice_options(train)), "local": cross_entropy}
    weights = {"prob": 1.0, "local": float(train.loss_lambda_local)}
    if "spatial" in output_names(model_config):
        losses["spatial"] = cross_entropy
        weights["spatial"] = float(train.loss_lambda_spatial)
    if model_config.presence_head:
        losses[presence.OUTPUT] = presence.presence_cross_entropy
        weights[presence.OUTPUT] = float(train.presence_weight)
    return losses, weights
