#!/usr/bin/env python3
"""Minimal inference script (the FLARE container's entry): ROI crop, prediction, resampling back.

``python predict.py -i /workspace/inputs -o /workspace/outputs`` segments every
``<case>_0000.nii.gz`` into ``<case>.nii.gz``. A few lines over :mod:`flare_seg.predict`
(``flare-seg predict --help`` lists the options: device, fp16, GPU memory mode, report, QC).
"""
import sys

from flare_seg.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
