"""Run an exported network piece by piece: full-resolution level in overlapping z-slabs, the rest whole.

The whole U-Net's receptive field is larger than its grid, so tiling the net cannot be exact; its
full-resolution level alone sees only a few voxels per convolution. So (see :mod:`flare_seg.export`)
``head`` (down block + pooling) and ``tail`` (down block again, upsampled core output, skip, up
block, logits) run per z-slab with ``halo_z`` voxels of context on each interior side, and their
outputs are cropped to the slab: every kept voxel then saw exactly what it sees in the untiled
net (where the slab meets the image border there is no halo, and the zero padding is the net's
own). ``core`` (the coarser levels, 8x smaller per level) and ``post`` (the SCN's spatial part at
1/4 resolution) run whole. The full-resolution 32- and 64-channel maps thus exist one slab at a
time; the tail recomputes the down block rather than storing it at full size.

Engine-neutral: a piece is run by ``run_piece(name, feeds) -> array``; NumPy does the rest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Slab thickness (full-resolution z voxels, even). 32 measured fastest of 16/32/64 on 2 Zen 3 cores
#: with OpenVINO at 128x128x160 while its 64-channel maps stay ~100 MB.
DEFAULT_SLAB_Z = 32


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


class SplitNet:
    """``predict(x (1, z, y, x, 1) float32) -> {output: (1, z, y, x, labels)}``, as the Keras predictor."""

    def __init__(self, record: dict, run_piece: Callable[[str, dict], np.ndarray], slab_z: int = DEFAULT_SLAB_Z):
        self.record = record
        self.pieces = record["pieces"]
        self.run_piece = run_piece
        self.slab_z = int(slab_z)
        if self.slab_z < 2 or self.slab_z % 2:
            raise ValueError(f"slab_z must be an even number >= 2, got {slab_z}")

    def _slabbed(self, name: str, feeds: dict[str, tuple[np.ndarray, int]], n_z: int) -> np.ndarray:
        """Run piece ``name`` per slab; each feed is (array, z downsampling of that array vs the image)."""
        piece = self.pieces[name]
        out = None
        for start, end, lo, hi in slabs(n_z, self.slab_z, int(piece["halo_z"])):
            slab_feeds = {k: a[:, :, lo // f : hi // f] for k, (a, f) in feeds.items()}
            y = self.run_piece(name, slab_feeds)
            f_out = (hi - lo) // y.shape[2]  # the output's z downsampling (head: 2, tail: 1)
            if out is None:
                out = np.empty((*y.shape[:2], n_z // f_out, *y.shape[3:]), dtype=np.float32)
            out[:, :, start // f_out : end // f_out] = y[:, :, (start - lo) // f_out : (end - lo) // f_out]
        return out

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if x.ndim != 5 or x.shape[0] != 1 or x.shape[-1] != 1:
            raise ValueError(f"expected input (1, z, y, x, 1), got {x.shape}")
        n_z = x.shape[1]
        if n_z % int(self.record.get("z_multiple", 2)):
            raise ValueError(f"input z size {n_z} is not a multiple of {self.record.get('z_multiple', 2)}")
        image = np.ascontiguousarray(x, dtype=np.float32).reshape(1, 1, *x.shape[1:4])
        head, core, tail = self.pieces["head"], self.pieces["core"], self.pieces["tail"]
        pooled = self._slabbed("head", {head["inputs"][0]: (image, 1)}, n_z)
        coarse = self.run_piece("core", {core["inputs"][0]: pooled})
        del pooled
        logits = self._slabbed("tail", {tail["inputs"][0]: (image, 1), tail["inputs"][1]: (coarse, 2)}, n_z)
        del coarse
        if "post" in self.pieces:
            post = self.pieces["post"]
            out = self.run_piece("post", {post["inputs"][0]: image, post["inputs"][1]: logits})
        else:
            out = np.moveaxis(logits, 1, -1)  # (1, c, z, y, x) -> (1, z, y, x, c), a view
        return {self.record["output"]: out}
