"""Durable writes: file contents and directory entries that survive a crash or power cut.

Standard library only (the watcher uses it through `worker.state`).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync `path` (in a folder that is itself published or fsynced afterwards)."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_json(path: Path, data: dict) -> None:
    """Atomically replace `path` with `data` as JSON: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    write_bytes(tmp, json.dumps(data, indent=2).encode())
    os.replace(tmp, path)
