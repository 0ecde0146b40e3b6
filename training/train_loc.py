#!/usr/bin/env python3
"""Train the localization U-Net (whole image at 6 mm): ``python training/train_loc.py --out runs/loc --data FLARE21/``.

A few lines over :func:`flare_seg.cli.train.main`; ``--help`` lists every option.
"""
import sys

from flare_seg.cli.train import main

if __name__ == "__main__":
    sys.exit(main(net="loc"))
