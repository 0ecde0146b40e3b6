"""TensorFlow engine: the Keras model itself (GPU hosts, with the GPU memory controls of
:mod:`flare_seg.runtime`). Runs the untiled net; the split nets are the exported engines'."""

from __future__ import annotations

from pathlib import Path

POLICY = {"fp32": None, "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


def load(folder: Path, expected: type, precision: str):
    from flare_seg.predict import load_model

    return load_model(folder, expected, POLICY[precision])
