"""`segd retry`: send failed inputs (state/failed/<id>/ with error.json) through the queue again.

Two kinds of failed entries:
- a job's input (`failed/<job_id>/` with claim.json): the folder goes back to
  `state/claimed/<job_id>/` and the job is enqueued again (the watcher's reconciliation enqueues
  it later when Redis is down). Its error.json and attempts record (the deaths counted on it) are
  kept in `retries.json`, so it runs with a fresh `worker.retries` budget.
- an inbox entry the watcher refused (`failed/<time>-<token>/`, no claim): when its name and kind
  are acceptable now (e.g. a name refused by an older segd), it is moved back to where it was in
  the inbox and the watcher claims it; a symlink, a FIFO, an unsafe name, an unknown type or a
  hard link is refused again, with the reason.

Idempotent: retrying a job that is already back in state/claimed/ answers its job id again and
enqueues nothing twice; what has nothing left to retry is refused with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from common import attempts, jobids, queues, registry, state
from common.config import Config
from common.durable import fsync_dir, replace_json
from common.names import ATTEMPTS_FILE, RETRIES_FILE, name_problem, relative_parts, shown
from watcher.inbox import Kind, classify

log = logging.getLogger("segd.retry")
HISTORY_FILE = RETRIES_FILE
ACTIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


@dataclass(frozen=True)
class RetryOutcome:
    target: str  # what was asked for: a failed entry's folder name, job id or input name
    job_id: str | None  # the job id it was queued under, when queued
    refused: str | None  # why it cannot be retried, else None


def _entries(failed_root: Path) -> list[Path]:
    try:
        return sorted(p for p in failed_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def _names(entry: Path) -> set[str]:
    """The names a failed entry answers to: its folder name, its input's name (and with the
    inbox folder it came from)."""
    found = {entry.name}
    error = state.read_error(entry)
    if error.get("name"):
        found.add(error["name"])
        if error.get("folder"):
            found.add(f"{error['folder']}/{error['name']}")
    try:
        claim = state.read_claim(entry)
    except (OSError, ValueError, TypeError):
        return found
    found.add(claim.image)
    if claim.folder:
        found.add(f"{claim.folder}/{claim.image}")
    return found


def retry(
    config: Config, targets: Sequence[str] = (), *, all_failed: bool = False
) -> list[RetryOutcome]:
    """Retry the failed entries named by `targets` (folder name, job id or input name), or all
    of them; one outcome per entry retried or per target that matched nothing."""
    state_dir = Path(config.paths.state)
    entries = _entries(state_dir / state.FAILED)
    chosen: list[tuple[str, Path]] = [(e.name, e) for e in entries] if all_failed else []
    outcomes: list[RetryOutcome] = []
    for target in targets:
        matches = [e for e in entries if target in _names(e)]
        if not matches:
            outcomes.append(_nothing_to_retry(state_dir, target))
        chosen += [(target, e) for e in matches if (e.name, e) not in chosen]
    done: set[Path] = set()
    for target, entry in chosen:
        if entry in done:
            continue
        done.add(entry)
        outcome = _retry_one(config, target, entry)
        if outcome.refused:
            log.warning("retry %s: refused: %s", shown(target), outcome.refused)
        else:
            log.info(
                "retry %s: sent through the queue again as job %s", shown(target), outcome.job_id
            )
        outcomes.append(outcome)
    return outcomes


def _nothing_to_retry(state_dir: Path, target: str) -> RetryOutcome:
    if state.JOB_ID_PATTERN.fullmatch(target):
        if (state_dir / state.CLAIMED / target).is_dir():
            return RetryOutcome(target, target, None)  # already back in the queue
        if (state_dir / state.DONE / target).is_dir():
            return RetryOutcome(target, None, "nothing left to retry: the job is done")
    return RetryOutcome(target, None, "nothing left to retry: no failed input has this name or id")


def _retry_one(config: Config, target: str, entry: Path) -> RetryOutcome:
    if (entry / state.CLAIM_FILE).exists():
        return _retry_job(config, target, entry)
    return _retry_refused_entry(config, target, entry)


def _keep_history(entry: Path) -> None:
    """Move error.json and the attempts record into retries.json (a list, oldest first) so the
    claim is clean again: a retried input gets a fresh `worker.retries` budget of deaths."""
    error_file, attempts_file = entry / state.ERROR_FILE, entry / ATTEMPTS_FILE
    if not error_file.exists() and not attempts_file.exists():
        return
    history_file = entry / HISTORY_FILE
    try:
        history = json.loads(history_file.read_text())["retries"]
    except (OSError, ValueError, KeyError, TypeError):
        history = []
    record = {"retried_at": state.now_iso(), "error": state.read_error(entry)}
    if attempts_file.exists():
        record["attempts"] = attempts.read(entry)
    history.append(record)
    replace_json(history_file, {"retries": history})
    error_file.unlink(missing_ok=True)
    attempts_file.unlink(missing_ok=True)


def _retry_job(config: Config, target: str, entry: Path) -> RetryOutcome:
    state_dir = Path(config.paths.state)
    try:
        claim = state.read_claim(entry)
    except (OSError, ValueError, TypeError) as exc:
        return RetryOutcome(target, None, f"its claim.json cannot be read ({exc})")
    job_id = entry.name
    if claim.job_id != job_id or not state.JOB_ID_PATTERN.fullmatch(job_id):
        return RetryOutcome(target, None, f"{entry} does not hold job {claim.job_id}")
    if not os.path.lexists(entry / claim.image):
        return RetryOutcome(target, None, f"its input {shown(claim.image)} is gone from {entry}")
    claimed = state.folder(state_dir, state.CLAIMED, job_id)
    if claimed.exists():
        return RetryOutcome(target, job_id, None)  # already claimed again: nothing twice
    _keep_history(entry)
    claimed.parent.mkdir(parents=True, exist_ok=True)
    os.rename(entry, claimed)
    fsync_dir(claimed.parent)
    try:
        connection = queues.connect(config)
        try:
            old = Job.fetch(job_id, connection=connection, serializer=queues.JSONSerializer)
            if old.get_status(refresh=False) not in ACTIVE:
                old.delete()  # its FAILED record would refuse the new enqueue (unique ids)
        except Exception:  # no record (expired, flushed): nothing to clear
            pass
        queues.enqueue_claim(connection, claim, config)
    except (RedisError, OSError) as exc:
        log.warning(
            "retry %s: Redis unavailable (%s); the watcher enqueues job %s when it is back",
            shown(target),
            exc,
            job_id,
        )
    return RetryOutcome(target, job_id, None)


def _retry_refused_entry(config: Config, target: str, entry: Path) -> RetryOutcome:
    """Put an entry the watcher refused back into the inbox, if it would be accepted now."""
    error = state.read_error(entry)
    name = error.get("name")
    stored_as = error.get("stored_as")
    if not stored_as:  # written before `stored_as` existed: the one file beside error.json
        others = [p.name for p in entry.iterdir() if p.name != state.ERROR_FILE]
        stored_as = others[0] if len(others) == 1 else None
    if not name or not stored_as or not os.path.lexists(entry / stored_as):
        return RetryOutcome(target, None, "nothing left to retry: the refused entry is gone")
    problem = name_problem(name)
    if problem:
        return RetryOutcome(target, None, f"{problem}, then drop it into the inbox again")
    stored = entry / stored_as
    kind, reason = classify(name, os.lstat(stored))
    if kind is Kind.REFUSED:
        return RetryOutcome(target, None, reason)
    if kind is Kind.TEMP:
        return RetryOutcome(target, None, "it has a writer's temporary name (.part); rename it")
    try:
        folder = error.get("folder") or ""
        destination = Path(config.paths.inbox).joinpath(*relative_parts(folder), name)
    except ValueError as exc:
        return RetryOutcome(target, None, str(exc))
    if os.path.lexists(destination):
        return RetryOutcome(target, None, f"the inbox already holds {shown(destination)}")
    job_id = None
    if kind is Kind.IMAGE:  # the id the watcher will claim it under (without a mask)
        job_id = jobids.job_id(
            jobids.file_sha256(stored), None, registry.current_version(config.paths.models)
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    _keep_history(entry)
    shutil.move(stored, destination)
    shutil.rmtree(entry, ignore_errors=True)  # only its history is left
    return RetryOutcome(target, job_id, None)
