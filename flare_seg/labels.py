"""The FLARE21 label table: values, names and overlay colours, plus mappings from other label sets."""

from __future__ import annotations

import numpy as np

BACKGROUND = 0
LIVER = 1
KIDNEY = 2
SPLEEN = 3
PANCREAS = 4

#: Label value -> organ name, in label order. Background is 0.
NAMES: dict[int, str] = {0: "background", 1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"}
#: The four organs (label values 1..4).
ORGANS: tuple[int, ...] = (LIVER, KIDNEY, SPLEEN, PANCREAS)
NUM_LABELS = len(NAMES)

#: Overlay colours (RGB, 0..1) as in the paper's figures: liver red, kidney green, spleen blue,
#: pancreas yellow.
COLORS: dict[int, tuple[float, float, float]] = {
    LIVER: (0.90, 0.15, 0.15),
    KIDNEY: (0.15, 0.80, 0.20),
    SPLEEN: (0.20, 0.35, 0.95),
    PANCREAS: (0.95, 0.85, 0.10),
}

#: Mappings of other label sets onto FLARE21 values (unlisted source values become background).
LABEL_MAPS: dict[str, dict[int, int]] = {
    "flare21": {1: LIVER, 2: KIDNEY, 3: SPLEEN, 4: PANCREAS},
    # FLARE22 (13 organs): 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 13 left kidney.
    "flare22": {1: LIVER, 2: KIDNEY, 3: SPLEEN, 4: PANCREAS, 13: KIDNEY},
    # AMOS22 (15 organs): 1 spleen, 2 right kidney, 3 left kidney, 6 liver, 10 pancreas.
    "amos": {1: SPLEEN, 2: KIDNEY, 3: KIDNEY, 6: LIVER, 10: PANCREAS},
    # TotalSegmentator v2 ("total" task): 1 spleen, 2 right kidney, 3 left kidney, 5 liver, 7 pancreas.
    "totalsegmentator": {1: SPLEEN, 2: KIDNEY, 3: KIDNEY, 5: LIVER, 7: PANCREAS},
}


def map_labels(labels: np.ndarray, mapping: dict[int, int] | str) -> np.ndarray:
    """Map a label array onto FLARE21 values with a lookup table; unlisted values become 0.

    ``mapping`` is a dict ``{source value: FLARE value}`` or a key of :data:`LABEL_MAPS`.
    """
    if isinstance(mapping, str):
        if mapping not in LABEL_MAPS:
            raise ValueError(f"unknown label mapping {mapping!r}; known: {sorted(LABEL_MAPS)}")
        mapping = LABEL_MAPS[mapping]
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise ValueError(f"label map has negative values (min {labels.min()})")
    top = int(labels.max()) if labels.size else 0
    lut = np.zeros(max(top, max(mapping, default=0)) + 1, dtype=np.uint8)
    for source, target in mapping.items():
        if target not in NAMES:
            raise ValueError(f"label mapping targets unknown FLARE value {target}")
        lut[source] = target
    return lut[labels]


def parse_label_map(text: str) -> dict[int, int] | str:
    """Parse a command-line label mapping: a known name, or ``"src:dst,src:dst"`` pairs."""
    if text in LABEL_MAPS:
        return text
    try:
        pairs = [item.split(":") for item in text.split(",") if item.strip()]
        return {int(src): int(dst) for src, dst in pairs}
    except ValueError as err:
        raise ValueError(
            f"label mapping {text!r} is neither a known name {sorted(LABEL_MAPS)} "
            "nor 'src:dst,src:dst' pairs"
        ) from err
