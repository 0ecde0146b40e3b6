"""Quality-control PNGs: axial and coronal CT slices with the label overlay (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flare_seg.atomic import atomic_path
from flare_seg.geometry import Geometry, to_canonical
from flare_seg.labels import COLORS, NAMES

WINDOW_HU = (-160.0, 240.0)  # abdominal soft-tissue window (level 40, width 400)


def _overlay(ct_slice: np.ndarray, label_slice: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    grey = np.clip((ct_slice - WINDOW_HU[0]) / (WINDOW_HU[1] - WINDOW_HU[0]), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for label, colour in COLORS.items():
        mask = label_slice == label
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


def _slice_indices(labels: np.ndarray) -> tuple[int, int]:
    """Axial and coronal slice through the labelled organs' centre (the volume centre if none)."""
    fg = np.argwhere(labels > 0)
    centre = fg.mean(axis=0) if len(fg) else (np.asarray(labels.shape) - 1) / 2
    return int(round(centre[0])), int(round(centre[1]))


def overlay_png(ct_hu: np.ndarray, labels: np.ndarray, geometry: Geometry, path: str | os.PathLike,
                title: str = "") -> Path:
    """Write an axial and a coronal slice of ``ct_hu`` with ``labels`` overlaid, in radiological view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ct, canon, _ = to_canonical(np.asarray(ct_hu), geometry)
    lab, _, _ = to_canonical(np.asarray(labels), geometry)
    z, y = _slice_indices(lab)
    sz, sy, sx = canon.spacing_mm
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    # Radiological view: patient's right on the image's left (canonical x runs to the left).
    axes[0].imshow(_overlay(ct[z], lab[z]), aspect=sy / sx, interpolation="nearest")
    axes[0].set_title(f"axial, slice {z}")
    axes[1].imshow(_overlay(ct[::-1, y, :], lab[::-1, y, :]), aspect=sz / sx, interpolation="nearest")
    axes[1].set_title(f"coronal, row {y}")
    for ax in axes:
        ax.axis("off")
    handles = [Patch(color=COLORS[k], label=NAMES[k]) for k in COLORS]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path
