#!/usr/bin/env python3
"""Train the SCN (segmentation at 2 mm): ``python training/train_seg.py --out runs/seg --data FLARE21/``.

A few lines over :func:`flare_seg.cli.train.main`; ``--help`` lists every option.
Example (phantoms only, no data needed): ``python training/train_seg.py --out runs/seg --synthetic 16``.
"""
import sys

from flare_seg.cli.train import main

if __name__ == "__main__":
    sys.exit(main(net="seg"))
