#!/usr/bin/env python3
"""26-connected components: connected-components-3d (cc3d) against scipy.ndimage.label.

    python benchmarks/bench_components.py [--repeats 5]

Two sizes that matter here: the localizer's foreground at 6 mm (what ``largest_component`` sees,
e.g. 64 x 80 x 80) and a whole organ mask on a 512 x 512 x 200 input grid (what ``--statistics``
counts). Masks are the phantom's organs (plus scattered false positives), so the topology is
realistic. Prints the median seconds of both and checks that they count the same components.
"""
import argparse
import statistics
import time

import numpy as np
from scipy import ndimage


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _masks(rng: np.random.Generator) -> dict:
    from flare_seg.synth import phantom

    _, labels = phantom.make_phantom(rng, shape_zyx=(200, 512, 512), spacing_mm=(2.5, 0.8, 0.8))
    full = labels > 0
    full |= rng.random(full.shape) < 1e-4  # scattered false positives: many tiny components
    coarse = ndimage.zoom(labels > 0, (64 / 200, 80 / 512, 80 / 512), order=0)
    return {"localizer 6 mm 64x80x80": coarse, "input grid 200x512x512": full}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import cc3d

    structure = np.ones((3, 3, 3), dtype=bool)
    for name, mask in _masks(np.random.default_rng(0)).items():
        as_u8 = np.ascontiguousarray(mask, dtype=np.uint8)
        n_cc3d = cc3d.connected_components(as_u8, connectivity=26, return_N=True)[1]
        n_scipy = ndimage.label(mask, structure=structure)[1]
        t_cc3d = _median_seconds(lambda m=as_u8: cc3d.connected_components(m, connectivity=26), args.repeats)
        t_scipy = _median_seconds(lambda m=mask: ndimage.label(m, structure=structure), args.repeats)
        print(f"{name:<26} components cc3d {n_cc3d} scipy {n_scipy} | cc3d {t_cc3d * 1e3:8.2f} ms  "
              f"scipy {t_scipy * 1e3:8.2f} ms  speed-up {t_scipy / t_cc3d:5.1f}x")


if __name__ == "__main__":
    main()
