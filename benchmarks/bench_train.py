#!/usr/bin/env python3
"""Training throughput: steps/s of the train step and samples/s of the data pipeline, both nets.

    python benchmarks/bench_train.py [--steps 5]

Samples/s is what one worker thread produces (augmentation included, one resampling per sample);
steps/s is the network's optimisation step alone. Training runs at min(steps/s, workers x samples/s).
"""
import argparse
import time

import numpy as np


def _throughput(sampler, steps: int) -> float:
    t0 = time.perf_counter()
    for i in range(steps):
        sampler.sample(i)
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    import keras

    from flare_seg.config import LocalizerConfig, SegmenterConfig, TrainConfig
    from flare_seg.geometry import Geometry
    from flare_seg.models import build_model
    from flare_seg.synth import phantom
    from flare_seg.training.data import LocSampler, SegSampler, make_case
    from flare_seg.training.loop import compile_model

    rng = np.random.default_rng(0)
    ct, labels = phantom.make_phantom(rng, shape_zyx=(120, 256, 256), spacing_mm=(3.0, 1.6, 1.6))
    case = make_case("bench", ct, labels, Geometry(ct.shape, (3.0, 1.6, 1.6)))
    print(f"backend {keras.backend.backend()}; phantom {ct.shape} at 3.0 x 1.6 x 1.6 mm")
    print(f"{'net':<4} {'size z,y,x':<12} {'steps/s':>8} {'s/step':>7} {'samples/s':>10}")
    for net, config, sizes in (("loc", LocalizerConfig(), [(32, 32, 32), (48, 64, 64), (64, 80, 80)]),
                               ("seg", SegmenterConfig(), [(32, 32, 32), (64, 64, 64), (96, 96, 96)])):
        model = compile_model(build_model(config), config, TrainConfig())
        for size in sizes:
            train = TrainConfig(train_size_zyx=size)
            sampler = (LocSampler if net == "loc" else SegSampler)([case], train, config.preprocess)
            samples_per_s = _throughput(sampler, args.steps)
            x, y = sampler.sample(0)
            names = ("logits",) if net == "loc" else ("prob", "local", "spatial")
            batch = (x[None, ..., None], {n: y[None] for n in names})
            model.train_on_batch(*batch)  # trace
            t0 = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(*batch)
            steps_per_s = args.steps / (time.perf_counter() - t0)
            print(f"{net:<4} {','.join(map(str, size)):<12} {steps_per_s:8.3f} {1 / steps_per_s:7.2f} "
                  f"{samples_per_s:10.2f}")


if __name__ == "__main__":
    main()
