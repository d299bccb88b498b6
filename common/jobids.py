"""Content-addressed job ids: the same input, mask and model give the same id.

Light (standard library only) so the watcher can compute ids before it enqueues.
"""

from __future__ import annotations

import hashlib
import os
import stat


def job_id(image_sha256: str, mask_sha256: str | None, model_version: str) -> str:
    """A 32-hex-digit id from the input's bytes, the region mask's bytes and the model version.

    RQ allows only [A-Za-z0-9_-] in ids; hex digits are a safe subset.
    """
    digest = hashlib.sha256()
    for part in (image_sha256, mask_sha256 or "-", model_version):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:32]


def folder_entries(folder: str | os.PathLike) -> list[str]:
    """The names in a frame folder that count as its content: not hidden, sorted by name."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def folder_sha256(folder: str | os.PathLike) -> str:
    """The sha256 (hex) of a frame folder: its entries in name order, each as its name and the
    sha256 of its bytes (an entry that is not a regular file counts by its name and kind)."""
    digest = hashlib.sha256()
    for name in folder_entries(folder):
        path = os.path.join(folder, name)
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            content = file_sha256(path)
        else:
            content = f"not-a-file:{stat.S_IFMT(info.st_mode):o}"
        digest.update(os.fsencode(name) + b"\0" + content.encode() + b"\0")
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (hex) of a regular file's bytes, read in 1 MiB pieces without following links."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
