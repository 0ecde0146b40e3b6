"""The per-case report: a typed record filled along the pipeline and serialised in one place.

:class:`CaseReport` is what ``flare-seg predict --report`` writes per case (``cases[i]`` in the JSON)
and what :meth:`flare_seg.predict.Segmenter.segment` returns beside the labels. Fields that a case
did not reach (an error before the localizer, a skipped case) stay ``None`` and are left out of
the JSON, so a record says what happened and nothing more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

#: Case outcomes.
STATUSES = ("ok", "error", "skipped")


@dataclass
class GridReport:
    """A network's input: array shape ``(z, y, x)`` and isotropic spacing in mm."""

    input_shape_zyx: list[int]
    spacing_mm: float


@dataclass
class BoxReport:
    """The organ box the localizer found, in input voxels (inclusive) and in physical mm (LPS)."""

    index_lo_zyx: list[int]
    index_hi_zyx: list[int]
    size_mm_zyx: list[float]
    corners_mm_lps: list[list[float]]
    touches_border: bool

    @classmethod
    def from_box(cls, box, geometry, input_shape) -> BoxReport:
        """From an inclusive index box ``(lo, hi)`` on ``geometry`` (an array of ``input_shape``)."""
        lo, hi = np.asarray(box[0]), np.asarray(box[1])
        touches = bool(np.any(lo == 0) or np.any(hi == np.asarray(input_shape) - 1))
        corners = [geometry.index_to_physical(lo - 0.5).tolist(), geometry.index_to_physical(hi + 0.5).tolist()]
        return cls(lo.tolist(), hi.tolist(), ((hi - lo + 1) * np.asarray(geometry.spacing_mm)).round(2).tolist(),
                   [[round(v, 2) for v in c] for c in corners], touches)


@dataclass
class CaseReport:
    """Everything recorded about one case (inputs, outcome, stages, memory, findings)."""

    case: str | None = None
    input: str | None = None
    output: str | None = None
    status: str = "ok"
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_geometry: dict | None = None
    localizer: GridReport | None = None
    segmenter: GridReport | None = None
    box: BoxReport | None = None
    organ_volumes_ml: dict[str, float] | None = None
    #: The segmenter's presence head (seed 001, ``presence_head``): probability that each organ is in
    #: the segmenter's input box; its organ probabilities were scaled by these. None without the head.
    organ_presence: dict[str, float] | None = None
    allocator_peak_bytes: dict[str, int | None] = field(default_factory=dict)
    seconds: dict[str, float] | None = None
    seconds_total: float | None = None
    memory: dict | None = None
    peak_rss_bytes: int | None = None
    qc_png: str | None = None
    #: Optional outputs (``--dicom-seg``, ``--statistics``): file paths, and the statistics themselves.
    dicom_seg: str | None = None
    statistics_json: str | None = None
    statistics: dict | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"case status must be one of {STATUSES}, got {self.status!r}")

    def fail(self, message: str) -> None:
        """Mark the case failed with a one-line ``message``."""
        self.status, self.error = "error", message

    def set_outputs(self, entries: dict) -> None:
        """Set the fields an optional output reports (``{"dicom_seg": path}``); unknown names are a bug."""
        for name, value in entries.items():
            if name not in ("dicom_seg", "statistics_json", "statistics"):
                raise ValueError(f"CaseReport has no output field {name!r}")
            setattr(self, name, value)

    def to_dict(self) -> dict:
        """The JSON form: plain values, ``None`` and empty optional fields left out."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name not in ("warnings", "notes") and value in ({}, [])):
                continue
            out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out
