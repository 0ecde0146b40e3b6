"""Image file names: which suffixes are images, and the case name of an input (no SimpleITK here, so
training data discovery uses the very rule inference uses)."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def image_suffix(path: str | os.PathLike) -> str:
    """The image suffix of ``path`` (``.nii.gz`` counts as one), or '' if it is not an image name."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), "")


def case_name(path: str | os.PathLike) -> str:
    """Case name of an input: ``<case>_0000.nii.gz`` -> ``<case>``, ``<name>.<ext>`` -> ``<name>``,
    a DICOM folder -> its folder name."""
    path = Path(path)
    suffix = image_suffix(path)
    if not suffix:
        return path.name
    stem = path.name[: -len(suffix)]
    return stem[:-5] if stem.endswith("_0000") else stem
