"""Files dropped onto the page, written into the inbox the way a careful writer does it.

Each file is one request (`POST /upload`, the raw bytes as the body, its name in the
`X-File-Name` header, percent-encoded UTF-8), so nothing is buffered in memory: the body streams
into `<inbox>/.upload-<token>.part` (a leading dot: the watcher leaves it alone), is fsynced,
and takes its name in one rename that never replaces a file already there. The name is kept;
it must be one safe path component. `web.max_upload_bytes` caps the size; the inbox's own rules
(types, sizes, names it accepts) are then the watcher's, which files anything it cannot use in
state/failed/ with a reason, as for any other writer.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import anyio

from common.durable import fsync_dir
from common.names import name_problem, shown

PART_SUFFIX = ".part"
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


class UploadRefused(Exception):
    """An upload that cannot go into the inbox; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(reason)


def file_name(raw: str | None) -> str:
    """The dropped file's name from the X-File-Name header; UploadRefused when the inbox would not
    take it as one path component (`common.names.name_problem`: empty, '.', '..', a separator, a
    control character, hidden, too long) or it is a writer's `.part` temp name."""
    if not raw:
        raise UploadRefused(400, "the upload has no file name (X-File-Name header)")
    try:
        name = unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise UploadRefused(400, "the file name is not valid UTF-8; rename the file") from None
    problem = name_problem(name)
    if "\\" in name and problem is None:
        problem = "the file name holds '\\' (a path from another system); drop the file itself"
    if problem is None and name.lower().endswith(PART_SUFFIX):
        problem = "names ending in .part are a writer's temp files; rename the file"
    if problem:
        raise UploadRefused(400, f"{shown(name)!r}: {problem}")
    return name


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename, refusing (FileExistsError) when `target` exists: Linux renameat2 RENAME_NOREPLACE,
    else a check then a rename (a tiny window, on old kernels and some network file systems)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        if (
            func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE)
            == 0
        ):
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), str(target))
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.replace(source, target)


async def receive(
    inbox: Path, name: str, body: AsyncIterator[bytes], max_bytes: int, declared: int | None
) -> Path:
    """Stream `body` into `inbox/name` atomically; returns the path. UploadRefused when it is too
    large (413), a file of that name is in the inbox already (409), or the disk fails (507)."""
    limit = f"web.max_upload_bytes = {max_bytes}"
    if declared is not None and declared > max_bytes:
        raise UploadRefused(413, f"{name}: {declared} bytes is larger than {limit}")
    target = inbox / name
    if os.path.lexists(target):
        raise UploadRefused(409, f"{name}: a file of that name is in the inbox already")
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".upload-{secrets.token_hex(8)}{PART_SUFFIX}"  # never the name: NAME_MAX
    size = 0
    try:
        handle = await anyio.to_thread.run_sync(lambda: open(tmp, "xb"))
        try:
            async for chunk in body:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadRefused(413, f"{name}: larger than {limit}")
                await anyio.to_thread.run_sync(handle.write, chunk)
            await anyio.to_thread.run_sync(handle.flush)
            await anyio.to_thread.run_sync(os.fsync, handle.fileno())
        finally:
            handle.close()
        await anyio.to_thread.run_sync(_rename_noreplace, tmp, target)
        await anyio.to_thread.run_sync(fsync_dir, inbox)
    except FileExistsError:
        raise UploadRefused(409, f"{name}: a file of that name is in the inbox already") from None
    except OSError as exc:
        raise UploadRefused(
            507, f"{name}: could not be written into the inbox ({exc.strerror})"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
