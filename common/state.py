"""The state folder: the file system, not Redis, is the source of truth for every input.

    <state>/claimed/<job_id>/   inputs taken from the inbox whose job has not ended (+ claim.json)
    <state>/done/<job_id>/      inputs whose result was published (kept: a later mask re-uses them)
    <state>/failed/<name>/      inputs that could not be used, with error.json (reason + detail)

Moves are renames inside one file system, so an input is always in exactly one place. Light
(standard library only): both the watcher and the workers use it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from common.durable import durable_rename, fsync_dir, replace_json

# The names of segd's own files live in common.names (with the inbox rule that reserves them);
# callers keep using state.CLAIM_FILE etc.
from common.names import (
    CLAIM_FILE,
    DUPLICATES,
    ENDED_FILE,
    ERROR_FILE,
    RESERVED_NAMES,
    is_safe_name,
    relative_parts,
)

CLAIMED, DONE, FAILED = "claimed", "done", "failed"
JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Claim:
    """What a claimed job is about (claim.json). `image` and `mask` are file names in the claim
    folder; `seq` orders claims of the same stem (a later claim's result wins). `image_sha256`
    and `mask_sha256` are the hashes the job id was made from: the worker checks the bytes it
    reads against them (None in claims written before segd recorded them). `run_as`: the RQ job
    that runs a claim a worker re-keyed to another model version (it keeps its first id).
    `folder` is the inbox folder the input came from, relative and '/'-separated ('' = the inbox
    itself): its result is published under the same folder of the outbox."""

    job_id: str
    stem: str
    image: str
    mask: str | None
    model_version: str
    claimed_at: str
    seq: int
    image_sha256: str | None = None
    mask_sha256: str | None = None
    run_as: str | None = None
    folder: str = ""


def folder(state_dir: str | os.PathLike, kind: str, job_id: str) -> Path:
    """`<state>/<kind>/<job_id>` after checking the id (job arguments are untrusted)."""
    if not JOB_ID_PATTERN.fullmatch(job_id or ""):
        raise ValueError(f"{job_id!r} is not a segd job id")
    return Path(state_dir) / kind / job_id


def safe_member(directory: Path, name: str | None) -> Path | None:
    """`directory/name` for a plain file name (no separators, not hidden); ValueError otherwise."""
    if name is None:
        return None
    if not is_safe_name(name):
        raise ValueError(f"{name!r} is not a plain file name")
    return directory / name


def write_claim(directory: Path, claim: Claim) -> None:
    replace_json(directory / CLAIM_FILE, asdict(claim))
    fsync_dir(directory)


def read_claim(directory: Path) -> Claim:
    """claim.json of a claim folder; ValueError when its inbox folder is not a safe relative path."""
    claim = Claim(**json.loads((directory / CLAIM_FILE).read_text()))
    relative_parts(claim.folder)
    return claim


def _move_dir(source: Path, target: Path) -> Path:
    """Rename `source` to `target` and return where it went: if `target` exists (a re-run), both
    are kept and `source` goes under `target/duplicates/`, since nothing is deleted unread."""
    _make_dirs(target.parent)
    try:
        return durable_rename(source, target)
    except OSError:
        if not target.is_dir():
            raise
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    landed = target / DUPLICATES / stamp
    _make_dirs(landed.parent)
    return durable_rename(source, landed)


def _make_dirs(path: Path) -> None:
    """mkdir -p, with each folder created made durable in its parent."""
    if path.is_dir():
        return
    _make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_dir(path.parent)


def finish(state_dir: str | os.PathLike, job_id: str, model_version: str | None = None) -> Path:
    """The job's result is published: move its claim to `done/` and record there when it ended
    (`ended.json`: `ended_at`, and the model version that ran), which `segd status` counts by."""
    target = folder(state_dir, DONE, job_id)
    landed = _move_dir(folder(state_dir, CLAIMED, job_id), target)
    replace_json(
        landed / ENDED_FILE,
        {"job_id": job_id, "ended_at": now_iso(), "model_version": model_version},
    )
    if landed != target:  # a re-run, under done/<id>/duplicates/: `segd status` looks by mtime
        os.utime(target)
    return landed


def read_ended(directory: Path) -> dict | None:
    """A done job's ended.json, or None (a job that ended before segd wrote it, or unreadable)."""
    try:
        data = json.loads((directory / ENDED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fail(state_dir: str | os.PathLike, job_id: str, reason: str, detail: str | None = None) -> Path:
    """The job's input cannot be used: move its claim to `failed/` with error.json.

    error.json is written into the claim folder first, then the folder moves: a failed folder
    never appears without its reason (a reader, or a crash in between, sees either a claim or a
    failure with its error.json)."""
    source = folder(state_dir, CLAIMED, job_id)
    replace_json(
        source / ERROR_FILE,
        {"job_id": job_id, "reason": reason, "detail": detail, "failed_at": now_iso()},
    )
    return _move_dir(source, folder(state_dir, FAILED, job_id))


def fail_entry(state_dir: str | os.PathLike, path: Path, reason: str, folder: str = "") -> Path:
    """Move an inbox entry that never became a job (symlink, FIFO, unsafe name, ...) to
    `failed/<time>-<token>/` under a safe name, never opening it, with error.json. `folder` is
    the entry's inbox folder (relative, '' = the inbox): error.json keeps it, so `segd retry`
    can put the entry back where it was."""
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    target = Path(state_dir) / FAILED / stamp
    _make_dirs(target)
    original = os.fsencode(path.name)
    shown = (
        path.name
        if is_safe_name(path.name) and path.name.casefold() not in RESERVED_NAMES
        else "input"
    )
    try:
        durable_rename(path, target / shown)
    except OSError as exc:  # e.g. another file system: leave it, but say why
        shutil.rmtree(target, ignore_errors=True)
        raise OSError(f"cannot move {path} to {target}: {exc.strerror}") from exc
    replace_json(
        target / ERROR_FILE,
        {
            "name": original.decode("utf-8", "backslashreplace"),
            "folder": folder,
            "stored_as": shown,
            "reason": reason,
            "failed_at": now_iso(),
        },
    )
    return target


def read_error(directory: Path) -> dict:
    try:
        return json.loads((directory / ERROR_FILE).read_text())
    except (OSError, ValueError):
        return {"reason": "unknown (no readable error.json)"}
