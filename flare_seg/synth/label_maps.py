"""Label maps the domain-randomised generator draws images from, each structure its own generation label.

Three kinds, all redistributable:

* six TotalSegmentator-dataset maps with 117 structures each (CC BY 4.0, bundled at 2 mm in
  ``flare_seg/data/label_maps/`` by ``scripts/prepare_label_maps.py``);
* the AMOS22 map of amos_0013 (15 classes, CC BY 4.0, ``flare_seg/data/amos_0013_labels.npz``);
* the parametric phantom's tissue maps (:func:`flare_seg.synth.phantom.make_tissue_map`), every
  tissue it draws (fat, muscle, each bone part, vessels, bowel wall, gas, ...) a separate label.

Every map gets two extra generation labels: the unlabelled tissue inside the body (filled outline of
all structures) and the air outside. A :class:`LabelMap` carries the lookup tables from generation
labels to FLARE labels and to a tissue class with a realistic HU range (used by the share of samples
that keep realistic intensities). NumPy/SciPy only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from importlib import resources

import numpy as np
from scipy import ndimage as ndi

from flare_seg import labels as flare_labels

log = logging.getLogger(__name__)

#: Realistic HU ranges of the tissue classes, wide enough for the contrast phases from non-contrast to
#: portal venous (non-contrast liver ~40-60 HU, a fatty liver lower; the shared liver-dome case is 37 HU).
TISSUE_HU = {
    "air": (-1010.0, -990.0), "body": (-110.0, 10.0), "fat": (-120.0, -80.0), "lung": (-900.0, -750.0),
    "airway": (-1000.0, -900.0), "bone": (180.0, 700.0), "cartilage": (100.0, 200.0), "muscle": (35.0, 70.0),
    "vessel": (110.0, 260.0), "heart": (90.0, 220.0), "liver": (30.0, 130.0), "spleen": (40.0, 140.0),
    "kidney": (30.0, 240.0), "kidney_cyst": (0.0, 25.0), "pancreas": (30.0, 120.0), "bowel": (-40.0, 80.0),
    "fluid": (0.0, 25.0), "gland": (40.0, 120.0), "brain": (25.0, 45.0), "cord": (20.0, 50.0),
}
TISSUES = tuple(TISSUE_HU)

#: Keyword -> tissue class of TotalSegmentator's 117 structures (first match wins).
_TOTALSEG_TISSUE = (
    ("kidney_cyst", "kidney_cyst"), ("kidney", "kidney"), ("liver", "liver"), ("spleen", "spleen"),
    ("pancreas", "pancreas"), ("lung", "lung"), ("trachea", "airway"), ("costal_cartilage", "cartilage"),
    ("vertebrae", "bone"), ("rib_", "bone"), ("sacrum", "bone"), ("hip_", "bone"), ("femur", "bone"),
    ("humerus", "bone"), ("scapula", "bone"), ("clavicula", "bone"), ("sternum", "bone"), ("skull", "bone"),
    ("heart", "heart"), ("atrial", "heart"), ("aorta", "vessel"), ("artery", "vessel"), ("vein", "vessel"),
    ("vena", "vessel"), ("brachiocephalic", "vessel"), ("trunk", "vessel"), ("colon", "bowel"),
    ("small_bowel", "bowel"), ("duodenum", "bowel"), ("stomach", "bowel"), ("esophagus", "bowel"),
    ("gallbladder", "fluid"), ("urinary_bladder", "fluid"), ("gluteus", "muscle"), ("iliopsoas", "muscle"),
    ("autochthon", "muscle"), ("adrenal", "gland"), ("thyroid", "gland"), ("prostate", "gland"),
    ("brain", "brain"), ("spinal_cord", "cord"),
)
_TOTALSEG_FLARE = {"liver": flare_labels.LIVER, "kidney_left": flare_labels.KIDNEY,
                   "kidney_right": flare_labels.KIDNEY, "kidney_cyst_left": flare_labels.KIDNEY,
                   "kidney_cyst_right": flare_labels.KIDNEY, "spleen": flare_labels.SPLEEN,
                   "pancreas": flare_labels.PANCREAS}
_AMOS_TISSUE = {1: "spleen", 2: "kidney", 3: "kidney", 4: "fluid", 5: "bowel", 6: "liver", 7: "bowel", 8: "vessel",
                9: "vessel", 10: "pancreas", 11: "gland", 12: "gland", 13: "bowel", 14: "fluid", 15: "gland"}
#: Tissue class of the phantom's tissue codes (:mod:`flare_seg.synth.tissues`, codes 0-29).
_PHANTOM_TISSUE = ("air", "muscle", "fat", "muscle", "fat", "lung", "lung", "bone", "bone", "cartilage", "fluid",
                   "cartilage", "bone", "vessel", "vessel", "vessel", "heart", "heart", "liver", "vessel", "kidney",
                   "kidney", "fluid", "spleen", "pancreas", "fluid", "bowel", "fluid", "airway", "bowel")

#: Look-alike pairs that touch in real CT: (FLARE organ, tissue class of its neighbour).
LOOKALIKES = ((flare_labels.LIVER, "spleen"), (flare_labels.KIDNEY, "bone"), (flare_labels.PANCREAS, "bowel"))


@dataclass
class LabelMap:
    """A generation label map in canonical ``(z, y, x)`` with its lookup tables (indexed by generation label)."""

    name: str
    labels: np.ndarray  # uint8 generation labels; BODY and AIR appended as the two highest values
    spacing_mm: tuple[float, float, float]
    to_flare: np.ndarray  # uint8 (n_labels,): FLARE label of each generation label
    tissue: np.ndarray  # int (n_labels,): index into TISSUES of each generation label
    outside: int  # the generation label of space outside the map (air)

    @property
    def num_labels(self) -> int:
        return len(self.to_flare)


def _tissue_index(names) -> np.ndarray:
    return np.asarray([TISSUES.index(n) for n in names], np.int16)


def with_body_and_air(name, labels, spacing_mm, to_flare, tissue, body_margin_mm=8.0) -> LabelMap:
    """Append two generation labels: unlabelled tissue inside the body outline, and air outside it.

    The body outline is the slice-wise filled union of all structures dilated by ``body_margin_mm``
    (the label maps have no skin or fat label); background voxels inside it become BODY, outside AIR.
    """
    labels = np.asarray(labels)
    n = int(max(labels.max(initial=0), len(to_flare) - 1)) + 1
    if n + 2 > 256:
        raise ValueError(f"{name}: {n} generation labels leave no room for body and air in uint8")
    body_label, air_label = n, n + 1
    iterations = max(1, int(round(body_margin_mm / float(np.min(spacing_mm[1:])))))
    out = labels.astype(np.uint8, copy=True)
    for z in range(labels.shape[0]):
        inside = ndi.binary_fill_holes(ndi.binary_dilation(labels[z] > 0, iterations=iterations))
        out[z][(labels[z] == 0) & inside] = body_label
        out[z][(labels[z] == 0) & ~inside] = air_label
    lut_flare = np.zeros(n + 2, np.uint8)
    lut_flare[: len(to_flare)] = to_flare
    lut_tissue = np.full(n + 2, TISSUES.index("body"), np.int16)
    lut_tissue[: len(tissue)] = tissue
    lut_tissue[air_label] = TISSUES.index("air")
    return LabelMap(name, out, tuple(float(s) for s in spacing_mm), lut_flare, lut_tissue, air_label)


def totalseg_tables(names: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(to_flare, tissue) lookup tables for TotalSegmentator's 117-structure ids."""
    n = max(names) + 1
    to_flare, tissue = np.zeros(n, np.uint8), ["body"] * n
    for k, name in names.items():
        to_flare[k] = _TOTALSEG_FLARE.get(name, 0)
        tissue[k] = next((t for key, t in _TOTALSEG_TISSUE if key in name), "body")
    return to_flare, _tissue_index(tissue)


def totalseg_names() -> dict[int, str]:
    path = resources.files("flare_seg") / "data" / "label_maps" / "labels_totalseg117.json"
    return {int(k): v for k, v in json.loads(path.read_text()).items()}


def _load_npz(path) -> tuple[np.ndarray, tuple[float, float, float]]:
    with np.load(str(path)) as data:
        return data["labels"], tuple(float(s) for s in data["spacing_mm"])


def amos_label_map(labels, spacing_mm, name="amos_0013") -> LabelMap:
    to_flare = np.zeros(16, np.uint8)
    for k, v in flare_labels.LABEL_MAPS["amos"].items():
        to_flare[k] = v
    tissue = _tissue_index(["body"] + [_AMOS_TISSUE[k] for k in range(1, 16)])
    return with_body_and_air(name, labels, spacing_mm, to_flare, tissue)


def bundled_label_maps(downsample_amos_in_plane: int = 2) -> list[LabelMap]:
    """The bundled real label maps (six TotalSegmentator subjects, amos_0013) as :class:`LabelMap` s."""
    folder = resources.files("flare_seg") / "data"
    names = totalseg_names()
    to_flare, tissue = totalseg_tables(names)
    maps = []
    for path in sorted((folder / "label_maps").iterdir(), key=lambda p: p.name):
        if path.name.startswith("totalseg_") and path.name.endswith(".npz"):
            labels, spacing = _load_npz(path)
            maps.append(with_body_and_air(path.name[: -len(".npz")], labels, spacing, to_flare, tissue))
    labels, spacing = _load_npz(folder / "amos_0013_labels.npz")
    k = downsample_amos_in_plane
    maps.append(amos_label_map(np.ascontiguousarray(labels[:, ::k, ::k]), (spacing[0], spacing[1] * k,
                                                                           spacing[2] * k)))
    return maps


def phantom_label_map(rng: np.random.Generator, name: str, shape_zyx=(72, 96, 96),
                      spacing_mm=(4.0, 4.0, 4.0), shift_mm=(0.0, 0.0, 0.0)) -> LabelMap:
    """A parametric phantom's tissue map as a label map: each of its 30 tissue codes a generation label."""
    from flare_seg.synth.phantom import make_tissue_map
    from flare_seg.synth.render import LABEL_LUT

    tissue_map = make_tissue_map(rng, shape_zyx, spacing_mm, field_of_view_shift_mm=shift_mm)
    n = len(_PHANTOM_TISSUE)
    tissue = _tissue_index(_PHANTOM_TISSUE)
    return LabelMap(name, tissue_map, tuple(float(s) for s in spacing_mm), LABEL_LUT[:n].copy(), tissue, 0)
