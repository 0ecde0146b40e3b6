"""Training on partially annotated data (seed 001, AttentionAnatomy): annotations, targets, losses.

A data folder may carry ``dataset.json`` saying which organs its label maps annotate::

    {"annotated": ["liver", "spleen"]}                                  # every case of the folder
    {"annotated": {"case_007": ["kidney"], "*": ["liver", "kidney", "spleen", "pancreas"]}}

Organs a case does not annotate are *unknown*, not background. The target carries that in the
one-hot map itself: an unknown organ's channel is ``-1`` everywhere (a real target is 0 or 1), so
the losses see it without any change to the data flow or the Keras loss signature
``(y_true, y_pred)``. Before a loss, the network's probabilities of unknown organs are merged into
the background (the seed's prediction re-calibration): the background target of a voxel
labelled 0 means "background or an unannotated organ", so finding an unannotated organ there
costs nothing. Dice terms count annotated organs only. With every organ annotated all of this
reduces to the paper's losses exactly.

Merging: for a softmax (the localizer) the merged background is ``p_bg + sum p_unknown`` (the
seed's formula); for the SCN's independent sigmoids it is the probability that the voxel is
background *or* any unknown organ, ``1 - (1 - p_bg) prod (1 - p_unknown)``, computed from the
logits for the cross-entropy terms.

``partial_mode="self"`` (:class:`flare_seg.config.TrainConfig`; not in the seed) is the alternative
for the segmenter's independent sigmoids. Under re-calibration the background channel is pushed
*up* on an unknown organ's voxels (the merged term is satisfied by whichever of the two leads, and
the background leads from the start), so a network that can tell its training cases apart learns
to call unlabelled organs background. Under ``"self"`` the losses touch an unknown organ's channel
only where it is known to be absent (on the voxels of the organs the case does annotate: organs do
not overlap), and the background's cross-entropy target on a label-0 voxel is the network's own
belief that no unknown organ is there, ``prod (1 - p_unknown)`` with the gradient stopped, in its
KL form (zero when the background agrees). So a label-0 voxel of a partial case costs the same
whether the network finds the unknown organ there or not, and nothing pushes that organ's channel
either way; the organ channels learn from the cases that annotate them. The Dice terms then count
annotated organs only, and not the background of a partially annotated sample.

The hybrid loss of seed 001 (batch Dice + spatially balanced focal loss) is here too; its
parameters are in :class:`flare_seg.config.TrainConfig`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from keras import ops

from flare_seg.labels import NAMES, ORGANS

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
UNKNOWN = -1.0
#: an unknown organ's target channel where a confident pseudo-label says it is absent / present
PSEUDO_ABSENT = -2.0
PSEUDO_PRESENT = -3.0
#: :attr:`flare_seg.training.data.TrainCase.pseudo` value of a voxel without a confident answer
PSEUDO_UNSURE = 255
#: label value ``PSEUDO_CODE + p`` in a sampler's label array: a label-0 voxel whose pseudo-label is
#: ``p`` (``p = 0``: no unknown organ), so the pseudo-labels follow the crop and the warp of the
#: labels (nearest neighbour) and :func:`partial_target` reads them back
PSEUDO_CODE = 16
_SPATIAL = (1, 2, 3)
_EPS = 1e-6


# ----------------------------------------------------------------------------- dataset.json


def _organ_labels(names, where: str) -> tuple[int, ...]:
    by_name = {NAMES[o]: o for o in ORGANS}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: 'annotated' must list organ names, got {names!r}")
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise ValueError(f"{where}: unknown organ name(s) {unknown}; expected some of {sorted(by_name)}")
    return tuple(sorted({by_name[n.lower()] for n in names}))


def read_annotations(folder: str | Path) -> dict[str, tuple[int, ...]] | tuple[int, ...] | None:
    """A folder's ``dataset.json`` annotations: one tuple of organ labels for the whole folder, a
    ``{case: labels}`` map (``"*"`` is the default), or None when the folder has no such file."""
    path = Path(folder) / DATASET_FILE if Path(folder).is_dir() else None
    if path is None or not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict) or "annotated" not in payload:
        raise ValueError(f"{path}: needs an object with an 'annotated' list or per-case map")
    annotated = payload["annotated"]
    if isinstance(annotated, dict):
        return {case: _organ_labels(names, f"{path} [{case}]") for case, names in annotated.items()}
    return _organ_labels(annotated, str(path))


def case_annotations(annotations, case_id: str, source) -> tuple[int, ...] | None:
    """The organs ``case_id`` annotates under ``annotations`` (:func:`read_annotations`); None = all."""
    if annotations is None or isinstance(annotations, tuple):
        return None if annotations == tuple(ORGANS) else annotations
    if case_id in annotations:
        found = annotations[case_id]
    elif "*" in annotations:
        found = annotations["*"]
    else:
        raise ValueError(f"{Path(source) / DATASET_FILE}: case {case_id!r} is not in the 'annotated' map "
                         "and there is no '*' default")
    return None if found == tuple(ORGANS) else found


def keep_annotated(labels: np.ndarray, annotated: tuple[int, ...] | None) -> np.ndarray:
    """Labels with unannotated organ values set to 0 (their voxels are 'background or unknown')."""
    if annotated is None:
        return labels
    return np.where(np.isin(labels, (0, *annotated)), labels, 0).astype(labels.dtype)


# ----------------------------------------------------------------------------- targets


def with_pseudo(labels: np.ndarray, pseudo: np.ndarray | None, annotated: tuple[int, ...] | None) -> np.ndarray:
    """The label array a sampler warps: ``labels`` with each label-0 voxel that has a confident
    pseudo-label ``p`` of an unknown organ (or ``p = 0``, none) coded ``PSEUDO_CODE + p``.

    A pseudo-label naming an annotated organ on a voxel its labels leave 0 contradicts them and
    stays unsure. Fully annotated cases and cases without pseudo-labels come back unchanged."""
    if pseudo is None or annotated is None:
        return labels
    if pseudo.shape != labels.shape:
        raise ValueError(f"pseudo-labels of shape {pseudo.shape} do not match labels of shape {labels.shape}")
    bad = np.setdiff1d(np.unique(pseudo), (0, *ORGANS, PSEUDO_UNSURE))
    if bad.size:
        raise ValueError(f"pseudo-labels hold {bad.tolist()}; expected 0, organ labels {list(ORGANS)} or "
                         f"{PSEUDO_UNSURE} (unsure)")
    confident = (labels == 0) & (pseudo != PSEUDO_UNSURE) & ~np.isin(pseudo, annotated)
    return np.where(confident, PSEUDO_CODE + pseudo.astype(np.int32), labels).astype(np.uint8)


def partial_target(labels: np.ndarray, num_labels: int, annotated: tuple[int, ...] | None,
                   honour: bool = True) -> np.ndarray:
    """One-hot ``(..., num_labels)`` target; unannotated organs' channels are :data:`UNKNOWN`.

    Label values from :func:`with_pseudo` (``PSEUDO_CODE + p``) are label-0 voxels whose unknown
    organs' channels say :data:`PSEUDO_PRESENT` (organ ``p``) or :data:`PSEUDO_ABSENT` (the others)
    instead of :data:`UNKNOWN`: the channel stays unknown to every loss but ``partial_mode="self"``'s
    cross-entropy, which reads them as targets.

    ``honour=False`` is the naive baseline: unannotated organs are plain background (channel 0).
    """
    coded = labels >= PSEUDO_CODE
    pseudo = np.where(coded, labels.astype(np.int32) - PSEUDO_CODE, -1) if coded.any() else None
    labels = keep_annotated(labels, annotated)  # codes exist only where organs are unannotated: cleared too
    target = (labels[..., None] == np.arange(num_labels)).astype(np.float32)
    if honour and annotated is not None:
        for organ in range(1, num_labels):
            if organ not in annotated:
                target[..., organ] = UNKNOWN
                if pseudo is not None:
                    target[..., organ][pseudo >= 0] = PSEUDO_ABSENT
                    target[..., organ][pseudo == organ] = PSEUDO_PRESENT
    return target


# ----------------------------------------------------------------------------- re-calibration


def known_channels(y_true):
    """``(b, labels)``: 1 where the channel is annotated (no :data:`UNKNOWN` value), else 0."""
    return ops.cast(ops.greater_equal(ops.min(ops.cast(y_true, "float32"), axis=_SPATIAL), 0.0), "float32")


def _any_unknown(known):
    """``(b, 1, 1, 1, 1)`` boolean: the sample has an unknown channel."""
    return ops.reshape(ops.less(ops.min(known, axis=-1), 0.5), (-1, 1, 1, 1, 1))


def recalibrate_softmax(y_true, probs):
    """Softmax probabilities with unknown organs' mass moved to the background (seed 001, eq. 5).

    Returns ``(target, probs, known)``: unknown channels are 0 in both target and probabilities.
    """
    known = known_channels(y_true)
    k = known[:, None, None, None, :]
    probs = ops.cast(probs, "float32")
    unknown_mass = ops.sum(probs * (1.0 - k), axis=-1, keepdims=True)
    kept = probs * k
    merged = ops.concatenate([kept[..., :1] + unknown_mass, kept[..., 1:]], axis=-1)
    return ops.maximum(ops.cast(y_true, "float32"), 0.0), merged, known


def recalibrate_independent(y_true, probs):
    """Independent per-label probabilities (the SCN's) with background := background OR unknown organ."""
    known = known_channels(y_true)
    k = known[:, None, None, None, :]
    probs = ops.cast(probs, "float32")
    keep = ops.prod(1.0 - probs * (1.0 - k), axis=-1, keepdims=True)
    background = ops.where(_any_unknown(known), 1.0 - (1.0 - probs[..., :1]) * keep, probs[..., :1])
    merged = ops.concatenate([background, (probs * k)[..., 1:]], axis=-1)
    return ops.maximum(ops.cast(y_true, "float32"), 0.0), merged, known


def recalibrate_self(y_true, probs):
    """``partial_mode="self"``'s Dice-term view: annotated organs only, and in a sample with unknown
    organs no background either (its label-0 voxels may be unknown organs). Returns
    ``(target, probs, known)`` like the other re-calibrations; channels not counted are 0 in both."""
    known = known_channels(y_true)
    partial_sample = ops.less(ops.min(known, axis=-1, keepdims=True), 0.5)
    known = ops.concatenate([ops.where(partial_sample, 0.0, known[:, :1]), known[:, 1:]], axis=-1)
    k = known[:, None, None, None, :]
    return ops.maximum(ops.cast(y_true, "float32"), 0.0) * k, ops.cast(probs, "float32") * k, known


# ----------------------------------------------------------------------------- losses


def masked_generalized_dice(target, probs, known):
    """Generalized Dice over the annotated channels (``known``), else as
    :func:`flare_seg.training.losses.generalized_dice_loss` (absent labels get the largest weight)."""
    volume = ops.sum(target, axis=_SPATIAL)
    present = ops.logical_and(ops.greater(volume, 0.5), ops.greater(known, 0.5))
    weights = ops.where(present, 1.0 / ops.square(ops.maximum(volume, 1.0)), 0.0)
    max_weight = ops.max(weights, axis=-1, keepdims=True)
    weights = ops.where(present, weights, max_weight) * known
    numerator = 2.0 * ops.sum(weights * ops.sum(target * probs, axis=_SPATIAL), axis=-1)
    denominator = ops.sum(weights * ops.sum(target + probs, axis=_SPATIAL), axis=-1)
    return 1.0 - (numerator + _EPS) / (denominator + _EPS)


def batch_dice(target, probs, known):
    """Batch Dice (seed 001): the batch is one volume; mean Dice over channels annotated anywhere in it.

    Returned once per batch element (the same value), as Keras expects."""
    intersection = ops.sum(target * probs, axis=(0, 1, 2, 3))
    total = ops.sum(target + probs, axis=(0, 1, 2, 3))
    counted = ops.max(known, axis=0)
    dsc = (2.0 * intersection + _EPS) / (total + _EPS)
    loss = 1.0 - ops.sum(counted * dsc) / ops.maximum(ops.sum(counted), 1.0)
    return ops.zeros_like(known[:, 0]) + loss


def spatially_balanced_focal(target, probs, known, gamma: float):
    """Focal loss with each class weighted by its inverse volume (seed 001): the mean over
    annotated, present classes of ``mean over the class's voxels of -(1 - p)^gamma log p``."""
    p = ops.clip(probs, 1e-7, 1.0)
    per_voxel = -target * ops.power(1.0 - p, gamma) * ops.log(p)
    volume = ops.sum(target, axis=_SPATIAL)
    counted = ops.cast(ops.greater(volume, 0.5), "float32") * known
    per_class = ops.sum(per_voxel, axis=_SPATIAL) / ops.maximum(volume, 1.0)
    return ops.sum(counted * per_class, axis=-1) / ops.maximum(ops.sum(counted, axis=-1), 1.0)


def _softplus(x):
    return ops.relu(x) + ops.log1p(ops.exp(-ops.abs(x)))


def partial_sigmoid_cross_entropy(y_true, logits):
    """Mean binary cross-entropy per label; unknown organs count 0 and the background term uses
    the merged probability ``1 - (1 - p_bg) prod (1 - p_unknown)``, from the logits:
    ``-log(1 - p') = S = softplus(x_bg) + sum softplus(x_unknown)``."""
    known = known_channels(y_true)
    k = known[:, None, None, None, :]
    z = ops.maximum(ops.cast(y_true, "float32"), 0.0)
    x = ops.cast(logits, "float32")
    per_voxel = (ops.relu(x) - x * z + ops.log1p(ops.exp(-ops.abs(x)))) * k
    s = _softplus(x[..., :1]) + ops.sum(_softplus(x) * (1.0 - k), axis=-1, keepdims=True)
    log_p = ops.log(ops.maximum(-ops.expm1(-s), 1e-12))
    merged = -z[..., :1] * log_p + (1.0 - z[..., :1]) * s
    background = ops.where(_any_unknown(known), merged, per_voxel[..., :1])
    per_voxel = ops.concatenate([background, per_voxel[..., 1:]], axis=-1)
    return ops.mean(per_voxel, axis=(1, 2, 3, 4))


def self_target_sigmoid_cross_entropy(y_true, logits):
    """``partial_mode="self"``: mean binary cross-entropy per label where each label's answer is known.

    Annotated channels: as the paper. An unknown organ's channel: target 0 on the annotated organs'
    voxels, its confident pseudo-label where it has one (:func:`partial_target`), nothing elsewhere.
    Background: target 0 on annotated organs' voxels; on a label-0 voxel the target
    ``t = prod_unknown (1 - q_u)``, ``q_u`` the pseudo-label where there is one and
    ``stop_gradient(p_u)`` elsewhere, as ``BCE(t, x) - H(t)`` (the KL divergence: 0 when the
    background agrees, and the same gradient).
    With every organ annotated this is :func:`flare_seg.training.losses.sigmoid_cross_entropy`."""
    known = known_channels(y_true)
    k = known[:, None, None, None, :]
    y = ops.cast(y_true, "float32")
    z = ops.maximum(y, 0.0)
    x = ops.cast(logits, "float32")
    unknown = 1.0 - k[..., 1:]
    pseudo_known = ops.cast(ops.less(y[..., 1:], 0.5 * (UNKNOWN + PSEUDO_ABSENT)), "float32") * unknown
    pseudo_present = ops.cast(ops.less(y[..., 1:], 0.5 * (PSEUDO_ABSENT + PSEUDO_PRESENT)), "float32") * unknown
    belief = ops.stop_gradient(ops.sigmoid(x[..., 1:]))
    p_unknown = (pseudo_present + (1.0 - pseudo_known) * belief) * unknown  # present implies known
    free = ops.prod(1.0 - p_unknown, axis=-1, keepdims=True)
    t_bg = z[..., :1] * free
    target = ops.concatenate([t_bg, z[..., 1:] * k[..., 1:] + pseudo_present], axis=-1)
    on_annotated_organ = ops.sum(z[..., 1:] * k[..., 1:], axis=-1, keepdims=True)
    told = ops.maximum(on_annotated_organ, pseudo_known)
    weight = ops.concatenate([ops.ones_like(t_bg), k[..., 1:] + unknown * told], axis=-1)
    bce = ops.relu(x) - x * target + ops.log1p(ops.exp(-ops.abs(x)))
    t = ops.clip(t_bg, 1e-7, 1.0 - 1e-7)
    entropy = ops.where(ops.logical_and(ops.greater(t_bg, 0.0), ops.less(t_bg, 1.0)),
                        -(t * ops.log(t) + (1.0 - t) * ops.log(1.0 - t)), 0.0)
    bce = ops.concatenate([bce[..., :1] - entropy, bce[..., 1:]], axis=-1)
    return ops.mean(bce * weight, axis=(1, 2, 3, 4))


def dice_term(recalibrate, loss: str = "paper", dice_weight: float = 1.0, focal_weight: float = 1.0,
              gamma: float = 2.0):
    """The Dice-type loss on probabilities, after ``recalibrate``: generalized Dice (``"paper"``)
    or ``dice_weight`` x batch Dice + ``focal_weight`` x spatially balanced focal (``"hybrid"``)."""
    if loss == "paper":
        def partial_generalized_dice(y_true, probs):
            return masked_generalized_dice(*recalibrate(y_true, probs))

        return partial_generalized_dice

    def hybrid_loss(y_true, probs):
        target, merged, known = recalibrate(y_true, probs)
        return dice_weight * batch_dice(target, merged, known) + \
            focal_weight * spatially_balanced_focal(target, merged, known, gamma)

    return hybrid_loss


def softmax_term(loss: str = "paper", **kwargs):
    """The localizer's loss on logits: softmax, re-calibration, then :func:`dice_term`."""
    inner = dice_term(recalibrate_softmax, loss, **kwargs)

    def partial_softmax_loss(y_true, logits):
        return inner(y_true, ops.softmax(ops.cast(logits, "float32"), axis=-1))

    return partial_softmax_loss
