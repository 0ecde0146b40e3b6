"""Optional dependencies (setup.cfg extras): one check that names the extra to install."""

from __future__ import annotations

import importlib.util


class MissingExtraError(ValueError):
    """A feature was asked for whose optional packages are not installed (a ValueError: CLI exit 2)."""


def require(feature: str, extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` naming ``feature`` and the pip extra if a module is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}: pip install 'flare-seg[{extra}]'")
