"""Package discovery only; all metadata lives in setup.cfg.

``setup.cfg`` cannot combine ``find:`` with the mapped ``weights/`` folder, so the list is built
here: every package under ``flare_seg/`` (a new subpackage cannot drop out of the wheel; a test
installs the wheel and imports every module) plus ``flare_seg.bundled_weights``.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["flare_seg", "flare_seg.*"]) + ["flare_seg.bundled_weights"])
