"""Training cases drawn from the phantom generator (parametric, and around the bundled AMOS label map)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Synthetic validation phantoms draw from this seed stream, training phantoms from another.
TRAIN_STREAM, VAL_STREAM = 1, 2


@dataclass(frozen=True)
class SyntheticSpec:
    """How phantoms are drawn: base shape/spacing, per-phantom variation, share of chest-only views."""

    shape_zyx: tuple = (64, 160, 160)
    spacing_mm: tuple = (5.0, 2.5, 2.5)
    vary: bool = False
    chest_fraction: float = 0.0


def phantom_view(rng: np.random.Generator, spec: SyntheticSpec, chest: bool):
    """Shape, spacing and field-of-view shift of one phantom (domain randomization when ``spec.vary``)."""
    shape, spacing = np.asarray(spec.shape_zyx), np.asarray(spec.spacing_mm, dtype=float)
    shift = np.zeros(3)
    if spec.vary:
        spacing = spacing * rng.uniform(0.7, 1.4, size=3)
        spacing[2] = spacing[1]  # square pixels in-plane
        shape = np.maximum(np.round(shape * np.asarray(spec.spacing_mm) / spacing), 8).astype(int)
        shape[0] = max(8, int(shape[0] * rng.uniform(0.4, 1.0)))
        shift = np.array([rng.uniform(-60, 60), rng.uniform(-15, 15), rng.uniform(-20, 20)])
    if chest:
        shift[0] = rng.uniform(200, 260)  # the view starts above the diaphragm dome
    return tuple(int(n) for n in shape), tuple(float(s) for s in spacing), tuple(float(v) for v in shift)


def synthetic_cases(count: int, seed: int, stream: int, spec: SyntheticSpec) -> list:
    """``count`` phantoms from seed stream ``stream``: parametric, every other one around the bundled
    AMOS label map, and a ``spec.chest_fraction`` share of chest-only views (no organs)."""
    from flare_seg.geometry import Geometry
    from flare_seg.synth import phantom
    from flare_seg.training.data import make_case

    cases = []
    amos = phantom_label_map()
    n_chest = int(round(count * spec.chest_fraction))
    for i in range(count):
        rng = np.random.default_rng([seed, stream, i])
        chest = i >= count - n_chest
        if i % 2 == 1 and amos is not None and not chest:
            ct, labels = phantom.phantom_from_label_map(rng, amos[0], amos[1], source="amos")
            case_spacing = amos[1]
        else:
            shape, case_spacing, shift = phantom_view(rng, spec, chest)
            ct, labels = phantom.make_phantom(rng, shape_zyx=shape, spacing_mm=case_spacing,
                                              field_of_view_shift_mm=shift)
        geometry = Geometry(ct.shape, tuple(float(s) for s in case_spacing))
        cases.append(make_case(f"phantom_s{stream}_{i:04d}", ct, labels, geometry))
    return cases


def phantom_label_map():
    """The bundled AMOS label map ``(labels, spacing_mm)`` (canonical orientation), or None."""
    from importlib import resources

    path = resources.files("flare_seg") / "data" / "amos_0013_labels.npz"
    if not path.is_file():
        return None
    with np.load(str(path)) as data:
        return data["labels"], tuple(float(s) for s in data["spacing_mm"])
