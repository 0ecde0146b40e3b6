#!/usr/bin/env python3
"""FLOPs per forward pass (2 x MAC of the convolutions, as the paper counts) and CPU seconds per pass.

    python benchmarks/bench_models.py [--repeats 3] [--threads N]

Paper (seed 002, section 2.2): localizer 8.61 GFLOP at 32^3 and 430.7 GFLOP at 80x80x256 (x, y, z);
SCN 8.80 GFLOP at 32^3 and 879.8 GFLOP at 160x128x160.
"""
import argparse
import statistics
import time

import numpy as np

PAPER_GFLOP = {("loc", (32, 32, 32)): 8.613207612, ("loc", (256, 80, 80)): 430.660377660,
               ("seg", (32, 32, 32)): 8.797627020, ("seg", (160, 128, 160)): 879.762672300}
SIZES = {"loc": [(32, 32, 32), (64, 80, 80), (128, 80, 80), (256, 80, 80)],
         "seg": [(32, 32, 32), (64, 64, 64), (96, 96, 96), (160, 128, 160)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--skip-largest", action="store_true", help="leave out the largest sizes (slow on CPU)")
    args = parser.parse_args()
    import keras

    from flare_seg.config import LocalizerConfig, SegmenterConfig
    from flare_seg.flops import conv_flops
    from flare_seg.models import build_model
    from flare_seg.runtime import compiled_predictor, configure_device

    info = configure_device("cpu", threads=args.threads)
    print(f"backend {keras.backend.backend()}, device {info.device}")
    print(f"{'net':<4} {'size z,y,x':<14} {'GFLOP':>8} {'paper':>8} {'diff %':>7} {'s/pass':>7} {'GFLOP/s':>8}")
    for net, config in (("loc", LocalizerConfig()), ("seg", SegmenterConfig())):
        model = build_model(config)
        predict = compiled_predictor(model)
        sizes = SIZES[net][:-1] if args.skip_largest else SIZES[net]
        for size in sizes:
            flops = conv_flops(model, size) / 1e9
            x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, *size, 1)).astype("float32")
            predict(x)  # trace/compile once per size
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                predict(x)
                times.append(time.perf_counter() - t0)
            seconds = statistics.median(times)
            paper = PAPER_GFLOP.get((net, size))
            diff = f"{100 * (flops / paper - 1):+.2f}" if paper else ""
            print(f"{net:<4} {','.join(map(str, size)):<14} {flops:8.1f} {paper or '':>8} {diff:>7} "
                  f"{seconds:7.2f} {flops / seconds:8.1f}")


if __name__ == "__main__":
    main()
