"""Where a result is published: its folder in the outbox, never taken from another picture.

    outbox/<inbox folder>/<stem>/      the result of `<inbox folder>/<stem>.<ext>`
    outbox/<inbox folder>/<stem>~2/    a different picture (another sha256) under a used stem
    outbox/<inbox folder>/<stem>~3/    ... and so on: the first free one

A result folder is replaced only by a newer result for the same input (the same image bytes, by
`input.sha256` in its manifest.json): the same picture with a new mask, or segmented again after
a new model. A folder of the inbox is mirrored the same way; if its name is taken by a result
folder (`visit.jpg` gave `outbox/visit/`), the mirror is `visit~2/`.

Choosing a name and publishing under it happen under an exclusive flock on the parent folder
itself (`locked`; no lock file is left in the outbox), held by every publisher (image and video
workers, `segd segment`, any host sharing a local outbox), so two workers finishing pictures of
the same stem at once cannot take the same folder, and an older claim never replaces a newer
claim's result.

A result is written in a hidden temp folder beside its final name first (`temp_folder`):
`.tmp-<claim seq>-<token>/` for a claimed input, so the next run of a claim whose worker died
while writing finds and removes what that run left (`remove_dead_temps`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from common.durable import fsync_dir
from common.names import relative_parts, shown
from common.published import candidates, mirrored
from common.published import read_manifest as _manifest

log = logging.getLogger("segd.worker")
FALLBACK_LOCK_FILE = ".publish.lock"  # only where a folder itself cannot be flocked
TMP_PREFIX = ".tmp-"  # results being written; input names cannot start with '.'


@contextlib.contextmanager
def locked(parent: Path) -> Iterator[None]:
    """Hold the exclusive publication lock of folder `parent` (created when missing): an flock
    on the folder itself; on a file system that cannot lock a folder, on
    `<parent>/.publish.lock`. Not re-entrant: a holder must not lock `parent` again."""
    parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            fd = os.open(parent / FALLBACK_LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def mirror(out_root: Path, folder: str) -> Path:
    """The outbox folder mirroring inbox folder `folder` ('' = the outbox itself), created on the
    way; a component whose name a result folder holds becomes `name~2` (then `~3`, ...)."""
    current = out_root
    for part in relative_parts(folder):
        with locked(current):
            for name in candidates(part):
                path = current / name
                if not os.path.lexists(path):
                    path.mkdir()
                    fsync_dir(current)
                    break
                if path.is_dir() and not path.is_symlink() and _manifest(path) is None:
                    break  # the mirror of this folder already
        current = path
    return current


def temp_folder(final: Path, claim_seq: int | None = None) -> Path:
    """The hidden folder beside `final` that its result is written in before publication:
    `.tmp-<claim seq>-<token>` for a claimed input (see `remove_dead_temps`), `.tmp-<token>`
    otherwise (`segd segment`). Never the input's name, which may be up to NAME_MAX long."""
    token = secrets.token_hex(8)
    return final.with_name(
        f"{TMP_PREFIX}{token}" if claim_seq is None else f"{TMP_PREFIX}{int(claim_seq)}-{token}"
    )


def remove_dead_temps(out_root: Path, folder: str, claim_seq: int) -> list[str]:
    """Remove the temp folders that earlier runs of claim `claim_seq` (from inbox folder
    `folder`) left in its mirrored outbox folder: their worker died while writing the result (a
    SIGKILL, the OOM killer, a power cut). Call it only where no other run of that claim can be
    live: at the start of the claim's own job after a death was counted, or when the claim is
    failed for its deaths. Returns the names removed (one listing of that folder)."""
    parent = mirrored(out_root, folder)
    if parent is None:
        return []
    prefix = f"{TMP_PREFIX}{int(claim_seq)}-"
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return []
    removed: list[str] = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


def choose(parent: Path, stem: str, sha256: str) -> tuple[Path, dict | None]:
    """(folder, its manifest or None): the first of `candidates(stem)` under `parent` that is free
    or holds a result of the same input. Call it under `locked(parent)`."""
    for name in candidates(stem):
        path = parent / name
        if not os.path.lexists(path):
            return path, None
        manifest = _manifest(path)
        if manifest is not None and (manifest.get("input") or {}).get("sha256") == sha256:
            return path, manifest
    raise AssertionError("candidates() never ends")


def publish_placed(
    parent: Path,
    stem: str,
    sha256: str,
    claim_seq: int | None,
    manifest: dict,
    finish: Callable[[Path, dict], None],
    out_root: Path,
) -> Path:
    """Choose the result folder for `stem` (sha256) under `parent` and publish there: `finish(
    folder, manifest)` writes the manifest and renames the temp folder. When that folder already
    holds the result of a later claim of the same input (a later mask), nothing is replaced and
    the existing folder is returned. The manifest gets `published_as` (the folder's path in the
    outbox) and, after a collision, `name_taken_by` (the sha256 of the pictures that hold `stem`)."""
    with locked(parent):
        folder, existing = choose(parent, stem, sha256)
        if existing is not None and int(existing.get("claim_seq") or 0) > int(claim_seq or 0):
            log.info(
                "%s: a newer result of the same input is published; not replacing it",
                shown(folder),
            )
            return folder
        relative = folder.relative_to(out_root).as_posix()
        manifest["published_as"] = relative
        if folder.name != stem:
            taken = [
                (_manifest(parent / name) or {}).get("input", {}).get("sha256")
                for name in _names_before(stem, folder.name)
            ]
            manifest["name_taken_by"] = taken
            log.warning(
                "%s: %s already holds the result of a different picture; publishing as %s",
                shown(manifest.get("input", {}).get("name", stem)),
                shown((parent / stem).relative_to(out_root).as_posix()),
                shown(relative),
            )
        finish(folder, manifest)
        return folder


def _names_before(stem: str, name: str) -> list[str]:
    found: list[str] = []
    for candidate in candidates(stem):
        if candidate == name:
            return found
        found.append(candidate)
    return found
