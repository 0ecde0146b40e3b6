"""Argument types shared by the subcommands and the scripts (argparse only, no heavy imports)."""

from __future__ import annotations

import argparse


def triple(text: str, kind=float) -> tuple:
    """``"z,y,x"`` -> a 3-tuple of positive ``kind`` (sizes, spacings).

    Anything else raises :class:`argparse.ArgumentTypeError` naming the text."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected three positive comma-separated numbers (z,y,x), got {text!r}")
    return values


def int_triple(text: str) -> tuple:
    return triple(text, int)
