"""Atomic file writes: the project's one way to write a file that readers see whole or not at all.

Every writer writes a hidden temporary sibling ``.<stem>.<host>-<pid>-<random>.partial<suffix>`` in
the target's folder and renames it over the target (``os.replace`` is atomic on POSIX within one file
system). The temporary name keeps the target's suffix (``.nii.gz``, ``.png``, ``.weights.h5``), so
writers that choose their format by extension still work; it starts with a dot and contains
``.partial``, so folder listings and ``--skip-existing`` never take it for a result. A process killed
mid-write (``kill -9``) leaves at most such a temporary file; the host and process id in its name let
:func:`remove_stale_temporaries` remove it as soon as that process is gone, while a concurrent
writer's file in progress (its process alive, or on another host) is kept until it is old.
"""

from __future__ import annotations

import contextlib
import os
import re
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


def _host_tag() -> str:
    """Eight hex digits naming this host, so a process id in a temporary name is checked only here."""
    import hashlib
    import socket

    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` with the same suffix (never matches ``*_0000.nii.gz``)."""
    path = Path(path)
    suffix = _suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    return path.parent / f".{stem}.{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:12]}{PARTIAL_MARK}{suffix}"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary file of :func:`temporary_path` (a write in progress or killed)."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def writer_is_gone(path: str | os.PathLike) -> bool:
    """Whether the process that wrote temporary file ``path`` has ended (known only for this host's files)."""
    match = re.search(r"\.([0-9a-f]{8})-(\d+)-[0-9a-f]{12}" + re.escape(PARTIAL_MARK), Path(path).name)
    if match is None or match.group(1) != _host_tag():
        return False
    pid = int(match.group(2))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


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
    """Remove temporary files in ``folder`` left by killed writers: those whose process has ended
    (this host) and any older than the limit; a concurrent writer's file in progress is kept.
    Returns the removed paths."""
    removed = []
    now = time.time()
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not is_temporary(entry):
            continue
        try:
            if not writer_is_gone(entry) and now - entry.stat().st_mtime < older_than_seconds:
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
        except FileNotFoundError:  # another process removed or renamed it meanwhile
            continue
    return removed
