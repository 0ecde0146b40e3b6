"""Which outputs a network trains and with which losses, for every architecture and loss option.

The SCN trains ``prob`` (Dice term) + ``local`` and ``spatial`` (cross-entropy, seed 002 eq. 2);
the plain and attention U-Nets have no spatial part and train ``prob`` + ``local``; the localizer
trains its softmax ``logits``. Every loss is the partial-label version of
:mod:`flare_seg.training.partial`, which equals the paper's on fully annotated data.
"""

from __future__ import annotations

from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig
from flare_seg.training import partial


def output_names(model_config) -> tuple[str, ...]:
    if isinstance(model_config, LocalizerConfig):
        return ("logits",)
    if isinstance(model_config, SegmenterConfig) and model_config.architecture != "scn":
        return ("prob", "local")
    return ("prob", "local", "spatial")


def _dice_options(train: TrainConfig) -> dict:
    return {"loss": train.loss, "dice_weight": train.hybrid_dice_weight, "focal_weight": train.hybrid_focal_weight,
            "gamma": train.focal_gamma}


def model_losses(model_config, train: TrainConfig) -> tuple[dict, dict]:
    """``(losses, loss_weights)`` dicts keyed by output name, for ``model.compile``."""
    if isinstance(model_config, LocalizerConfig):
        return {"logits": partial.softmax_term(**_dice_options(train))}, {"logits": 1.0}
    losses = {"prob": partial.dice_term(partial.recalibrate_independent, **_dice_options(train)),
              "local": partial.partial_sigmoid_cross_entropy}
    weights = {"prob": 1.0, "local": float(train.loss_lambda_local)}
    if "spatial" in output_names(model_config):
        losses["spatial"] = partial.partial_sigmoid_cross_entropy
        weights["spatial"] = float(train.loss_lambda_spatial)
    return losses, weights
