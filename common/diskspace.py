"""The free-space floor: workers take no job while the outbox's or the state folder's file system
has less than `worker.min_free_bytes` free (os.statvfs: the bytes an unprivileged writer may use).

Light (standard library only): the workers pause on it, `segd status` and `segd status --check`
report it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.config import Config


@dataclass(frozen=True)
class LowSpace:
    """A watched folder whose file system is below the floor."""

    role: str  # "outbox" or "state"
    path: Path
    free_bytes: int
    floor_bytes: int

    def __str__(self) -> str:
        return (
            f"low disk space: {self.role} {self.path} has {self.free_bytes} bytes free, below "
            f"worker.min_free_bytes = {self.floor_bytes}; workers take no job until space is freed"
        )


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for an unprivileged writer on the file system of `path` (or of the nearest
    existing folder above it)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def low_space(config: Config) -> list[LowSpace]:
    """The folders (outbox, state) whose file system has less than the floor free; [] when the
    floor is 0 or every one is above it."""
    floor = config.worker.min_free_bytes
    if floor <= 0:
        return []
    found = []
    for role, path in (("outbox", config.paths.outbox), ("state", config.paths.state)):
        try:
            free = free_bytes(path)
        except OSError:
            continue  # an unreadable folder is reported by what fails to use it
        if free < floor:
            found.append(LowSpace(role, Path(path), free, floor))
    return found
