#!/usr/bin/env python3
"""Copy a training run's EMA weights into a model folder for inference (config + weights-only file + sha256).

    python scripts/export_weights.py runs/loc weights/loc [--weights best.weights.h5]

The weights are re-saved from a freshly built, uncompiled network, so the file holds the network's
variables only (no optimizer state), and its sha256 is written beside it.
"""
import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="training run folder (config.json, model.weights.h5)")
    parser.add_argument("target", type=Path, help="model folder to write (e.g. weights/seg)")
    parser.add_argument("--weights", default="model.weights.h5", help="weights file of the run (default: last EMA)")
    args = parser.parse_args()
    from flare_seg import atomic
    from flare_seg.config import load_config
    from flare_seg.models import build_model
    from flare_seg.predict import sha256_of

    config = load_config(args.run / "config.json")
    model = build_model(config)
    model.load_weights(args.run / args.weights)
    args.target.mkdir(parents=True, exist_ok=True)
    atomic.copy_file(args.run / "config.json", args.target / "config.json")
    with atomic.atomic_path(args.target / "model.weights.h5") as tmp:
        model.save_weights(tmp)
    digest = sha256_of(args.target / "model.weights.h5")
    atomic.write_text(args.target / "model.weights.h5.sha256", f"{digest}  model.weights.h5\n")
    print(f"{args.target}: {model.count_params()} parameters, sha256 {digest}")


if __name__ == "__main__":
    main()
