"""Run an exported network piece by piece: the finest levels in overlapping z-slabs, the rest whole.

The whole U-Net's receptive field is larger than its grid, so tiling the net cannot be exact; its
full-resolution level alone sees only a few voxels per convolution. So (see :mod:`flare_seg.export`)
``head`` (down block + pooling) and ``tail`` (down block again, upsampled core output, skip, up
block, logits), and ``head2`` / ``tail2`` one level down (see :data:`flare_seg.export.SPLIT_DEPTH`),
run per z-slab with ``halo_z`` voxels of context on each interior side, and their
outputs are cropped to the slab: every kept voxel then saw exactly what it sees in the untiled
net (where the slab meets the image border there is no halo, and the zero padding is the net's
own). ``core`` (1/4 resolution and coarser, 8x smaller per level) and ``spatial`` (the SCN's
spatial nets at 1/4 resolution) run whole. The full- and half-resolution 32- and 64-channel maps
thus exist one slab at a time; each tail recomputes its level's down block rather than storing it.
Exports made with one slabbed level (``head``, ``core``, ``tail``) run unchanged. A segmenter
with seed 001's presence head has one more whole piece, ``presence`` (the core's input -> the
head's logits), whose output every ``combine`` slab takes whole to scale its probabilities, and
which ``predict`` returns as the record's ``extra_outputs``.

Engine-neutral: a piece is run by ``run_piece(name, feeds) -> array``; NumPy does the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Slab thickness in z voxels of a piece's own input resolution (even). Measured with OpenVINO on a
#: 512x512x300 phantom (SCN grid 128x128x160), 2 loaded Zen 3 cores, one slabbed level: whole-process
#: peak RSS 0.96 GB at 8, 1.09 GB at 16, 1.8 GB untiled; the SCN forward was no slower at 8 (53 s vs
#: 61 s on the loaded machine). Two slabbed levels (Zen 4, 2026-12-02): 0.81 GB at 300 slices.
DEFAULT_SLAB_Z = 8


def slabs(n_z: int, slab_z: int, halo_z: int) -> list[tuple[int, int, int, int]]:
    """``(start, end, lo, hi)`` per slab: output z-range ``[start, end)``, computed on ``[lo, hi)``.

    Starts and ends are multiples of ``slab_z`` (even), and ``lo``/``hi`` extend them by ``halo_z``
    inside the image; a slab covering the whole axis has no halo at all (the untiled net).
    """
    if slab_z < 2 or slab_z % 2 or halo_z % 2:
        raise ValueError(f"slab_z and halo_z must be even (slab >= 2), got {slab_z}, {halo_z}")
    out = []
    for start in range(0, n_z, slab_z):
        end = min(start + slab_z, n_z)
        out.append((start, end, max(0, start - halo_z), min(n_z, end + halo_z)))
    return out


def _take_z(array: np.ndarray, axis: int, lo: int, hi: int) -> np.ndarray:
    index = [slice(None)] * array.ndim
    index[axis] = slice(lo, hi)
    return array[tuple(index)]


class SplitNet:
    """``predict(x (1, z, y, x, channels) float32) -> {output: (1, z, y, x, labels)}``, as the Keras predictor.

    Runs the record's pieces in order; each tensor is dropped after its last use, and
    ``release(name)`` lets the engine free a piece's working memory once it is done.
    """

    def __init__(self, record: dict, run_piece: Callable[[str, dict], np.ndarray],
                 slab_z: int = DEFAULT_SLAB_Z, release: Callable[[str], None] | None = None):
        self.record = record
        self.pieces = record["pieces"]
        self.run_piece = run_piece
        self.release = release or (lambda name: None)
        self.slab_z = int(slab_z)
        if self.slab_z < 2 or self.slab_z % 2:
            raise ValueError(f"slab_z must be an even number >= 2, got {slab_z}")

    def _slabbed(self, name: str, feeds: dict[str, np.ndarray], n_z: int) -> np.ndarray:
        """Run piece ``name`` per z-slab (inputs at their z factors) and assemble the cropped outputs."""
        piece = self.pieces[name]
        align, f_out, axis = int(piece["align_z"]), int(piece["output_z_factor"]), int(piece["z_axis"])
        factors = dict(zip(piece["inputs"], piece["input_z_factors"], strict=True))
        # slab_z voxels at the piece's own (finest input) resolution: a half-resolution level's
        # slabs are as thick in its voxels as the full-resolution ones, so its halo recomputes as little
        slab = -(-self.slab_z * min(f for f in factors.values() if f) // align) * align
        out = None
        for start, end, lo, hi in slabs(n_z, slab, int(piece["halo_z"])):
            # z factor 0: a tensor without z (the presence logits) goes to every slab whole
            y = self.run_piece(name, {k: a[:, :, lo // factors[k] : hi // factors[k]] if factors[k] else a
                                      for k, a in feeds.items()})
            if out is None:
                shape = list(y.shape)
                shape[axis] = n_z // f_out
                out = np.empty(shape, dtype=np.float32)
            _take_z(out, axis, start // f_out, end // f_out)[...] = _take_z(
                y, axis, (start - lo) // f_out, (end - lo) // f_out)
        return out

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"expected input (1, z, y, x, channels), got {x.shape}")
        n_z = x.shape[1]
        align = max(int(p["align_z"]) for p in self.pieces.values())
        if n_z % align:
            raise ValueError(f"input z size {n_z} is not a multiple of {align}")
        # channels first; with one channel a free reshape (seed 000's anatomical channel makes two)
        tensors = {"image": np.ascontiguousarray(np.moveaxis(x, -1, 1), dtype=np.float32)}
        order = list(self.pieces)
        extra = self.record.get("extra_outputs", {})  # output name -> tensor, kept to the end
        last_use = {t: i for i, name in enumerate(order) for t in self.pieces[name]["inputs"]
                    if t not in extra.values()}
        for i, name in enumerate(order):
            piece = self.pieces[name]
            feeds = {k: tensors[k] for k in piece["inputs"]}
            if piece["slabbed"]:
                result = self._slabbed(name, feeds, n_z)
            else:
                result = self.run_piece(name, feeds)
            self.release(name)
            del feeds
            for t in [t for t, last in last_use.items() if last == i]:
                tensors.pop(t, None)
            tensors[piece["outputs"][0]] = result
        out = tensors[self.pieces[order[-1]]["outputs"][0]]
        if int(self.pieces[order[-1]]["z_axis"]) == 2:
            out = np.moveaxis(out, 1, -1)  # (1, c, z, y, x) -> (1, z, y, x, c), a view
        return {self.record["output"]: out, **{name: tensors[t] for name, t in extra.items()}}
