"""An "oracle" pair of networks that return the ground truth pushed through the same preprocessing.

Replacing both networks with it tests everything around them (reorientation, grids, box, margin,
the way back to the input grid) against the foundation's DSC thresholds.
"""

from __future__ import annotations

import numpy as np

from flare_seg.geometry import Geometry, to_canonical
from flare_seg.predict import LoadedModel, Segmenter
from flare_seg.preprocess import box_in_input, loc_record, one_hot, resample_to_grid, seg_record


def oracle_segmenter(labels: np.ndarray, geometry: Geometry, loc_config, seg_config) -> Segmenter:
    """A Segmenter whose networks answer from ``labels`` (on ``geometry``'s grid) for that one case."""
    canon, canon_geometry, _ = to_canonical(labels, geometry)
    canon = np.ascontiguousarray(canon)
    spacing = canon_geometry.spacing_mm
    state = {}

    def loc_predict(x):
        record = loc_record(canon.shape, spacing, loc_config.preprocess)
        assert tuple(record.output_shape) == tuple(x.shape[1:4])
        fg = resample_to_grid((canon > 0).astype(np.float32), record, order=1, cval=0.0) > 0.5
        state["box"] = box_in_input(fg, record, seg_config.preprocess.largest_component_only)
        return {"logits": (one_hot(fg.astype(np.uint8), 2) * 20.0 - 10.0)[None]}

    def seg_predict(x):
        record = seg_record(state["box"], canon.shape, spacing, seg_config.preprocess)
        assert tuple(record.output_shape) == tuple(x.shape[1:4])
        hot = one_hot(canon, 5)
        soft = np.stack([resample_to_grid(hot[..., k], record, order=1, cval=float(k == 0)) for k in range(5)], -1)
        return {"prob": soft[None]}

    return Segmenter(LoadedModel(loc_config, None, loc_predict, "oracle", "oracle/loc"),
                     LoadedModel(seg_config, None, seg_predict, "oracle", "oracle/seg"))
