"""Atomic file writes: the project's one way to write a file that readers see whole or not at all.

Every writer writes a hidden temporary sibling ``.<stem>.<random>.partial<suffix>`` in the target's
folder and renames it over the target (``os.replace`` is atomic on POSIX within one file system).
The temporary name keeps the target's suffix (``.nii.gz``, ``.png``, ``.weights.h5``), so writers that
choose their format by extension still work; it starts with a dot and contains ``.partial``, so
folder listings and ``--skip-existing`` never take it for a result. A process killed mid-write
leaves at most such a temporary file; :func:`remove_stale_temporaries` removes old ones.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

PARTIAL_MARK = ".partial"
#: Compound suffixes kept whole on the temporary name.
_COMPOUND_SUFFIXES = (".nii.gz", ".weights.h5", ".seg.dcm", ".statistics.json")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return path.name[-len(suffix):]
    return path.suffix


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` with the same suffix (never matches ``*_0000.nii.gz``)."""
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    return path.parent / f".{stem}.{uuid.uuid4().hex[:12]}{PARTIAL_MARK}{suffix}"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`temporary_path` (a write in progress or killed)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    For writers that take a file name (SimpleITK, matplotlib, Keras, NumPy). A folder written there
    replaces a folder ``path`` (the old one is moved aside first, then removed).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: output folder {path.parent} does not exist")
    tmp = temporary_path(path)
    try:
        yield tmp
        if tmp.is_dir():
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _replace_folder(tmp: Path, path: Path) -> None:
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the normal permissions of a new file (umask applied)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy ``source`` to ``path`` atomically (a failed copy leaves no stray temporary file)."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)


def remove_stale_temporaries(folder: str | os.PathLike, older_than_seconds: float = 3600.0) -> list[Path]:
    """Remove temporary files in ``folder`` left by killed writers (only those older than the limit,
    so a concurrent writer's file in progress is kept); returns the removed paths."""
    removed = []
    now = time.time()
    for entry in Path(folder).iterdir():
        if not is_temporary(entry):
            continue
        try:
            if now - entry.stat().st_mtime < older_than_seconds:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            continue
    return removed
