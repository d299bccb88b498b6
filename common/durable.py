"""Durable writes: file contents and directory entries that survive a crash or power cut.

A rename is only on disk once the folder holding the new name (and, for a move between folders,
the one that lost the old name) is fsynced: `durable_rename` is the one way segd moves anything
whose place is the file system's truth (claims, duplicates, done/ and failed/, models/current).

Standard library only (the watcher uses it through `common.state`).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename `source` to `target` (os.replace semantics for files, os.rename for folders) and
    fsync the target's folder and, when it differs, the source's: when this returns, the move
    survives a power cut. Returns `target` as a Path."""
    source, target = Path(source), Path(target)
    os.rename(source, target)
    fsync_dir(target.parent)
    if os.path.realpath(source.parent) != os.path.realpath(target.parent):
        fsync_dir(source.parent)
    return target


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync `path` (in a folder that is itself published or fsynced afterwards)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_json(path: Path, data: dict) -> None:
    """Atomically and durably replace `path` with `data` as JSON: temp file, fsync, rename,
    fsync of the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    write_bytes(tmp, (json.dumps(data, indent=2) + "\n").encode())
    durable_rename(tmp, path)
