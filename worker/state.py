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

from worker.durable import fsync_dir, replace_json

CLAIMED, DONE, FAILED = "claimed", "done", "failed"
CLAIM_FILE = "claim.json"
ERROR_FILE = "error.json"
DUPLICATES = "duplicates"
JOB_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# File names segd accepts from the inbox: printable, no separators, not hidden, ≤ 200 bytes.
SAFE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9 ._+=,@()\[\]-]{0,199}$")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Claim:
    """What a claimed job is about (claim.json). `image` and `mask` are file names in the claim
    folder; `seq` orders claims of the same stem (a later claim's result wins)."""

    job_id: str
    stem: str
    image: str
    mask: str | None
    model_version: str
    claimed_at: str
    seq: int


def folder(state_dir: str | os.PathLike, kind: str, job_id: str) -> Path:
    """`<state>/<kind>/<job_id>` after checking the id (job arguments are untrusted)."""
    if not JOB_ID_PATTERN.fullmatch(job_id or ""):
        raise ValueError(f"{job_id!r} is not a segd job id")
    return Path(state_dir) / kind / job_id


def safe_member(directory: Path, name: str | None) -> Path | None:
    """`directory/name` for a plain file name (no separators, not hidden); ValueError otherwise."""
    if name is None:
        return None
    if not SAFE_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain file name")
    return directory / name


def write_claim(directory: Path, claim: Claim) -> None:
    replace_json(directory / CLAIM_FILE, asdict(claim))
    fsync_dir(directory)


def read_claim(directory: Path) -> Claim:
    return Claim(**json.loads((directory / CLAIM_FILE).read_text()))


def _move_dir(source: Path, target: Path) -> Path:
    """Rename `source` to `target` and return where it went: if `target` exists (a re-run), both
    are kept and `source` goes under `target/duplicates/`, since nothing is deleted unread."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)
        landed = target
    except OSError:
        if not target.is_dir():
            raise
        stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
        landed = target / DUPLICATES / stamp
        landed.parent.mkdir(parents=True, exist_ok=True)
        os.rename(source, landed)
    fsync_dir(landed.parent)
    return landed


def finish(state_dir: str | os.PathLike, job_id: str) -> Path:
    """The job's result is published: move its claim to `done/`."""
    return _move_dir(folder(state_dir, CLAIMED, job_id), folder(state_dir, DONE, job_id))


def fail(state_dir: str | os.PathLike, job_id: str, reason: str, detail: str | None = None) -> Path:
    """The job's input cannot be used: move its claim to `failed/` with error.json."""
    target = _move_dir(folder(state_dir, CLAIMED, job_id), folder(state_dir, FAILED, job_id))
    replace_json(
        target / ERROR_FILE,
        {"job_id": job_id, "reason": reason, "detail": detail, "failed_at": now_iso()},
    )
    return target


def fail_entry(state_dir: str | os.PathLike, path: Path, reason: str) -> Path:
    """Move an inbox entry that never became a job (symlink, FIFO, unsafe name, ...) to
    `failed/<time>-<token>/` under a safe name, never opening it, with error.json."""
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
    target = Path(state_dir) / FAILED / stamp
    target.mkdir(parents=True)
    original = os.fsencode(path.name)
    reserved = (ERROR_FILE, CLAIM_FILE, DUPLICATES)
    shown = (
        path.name
        if SAFE_NAME_PATTERN.fullmatch(path.name) and path.name not in reserved
        else "input"
    )
    try:
        os.rename(path, target / shown)
    except OSError as exc:  # e.g. another file system: leave it, but say why
        shutil.rmtree(target, ignore_errors=True)
        raise OSError(f"cannot move {path} to {target}: {exc.strerror}") from exc
    replace_json(
        target / ERROR_FILE,
        {
            "name": original.decode("utf-8", "backslashreplace"),
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
