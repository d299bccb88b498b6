"""What an unexpected error in a segment or video job means for its input.

Transient trouble is not the input's fault: no space left (ENOSPC, EDQUOT), an I/O error (EIO),
the GPU out of memory, Redis lost. The job is retried with back-off (RQ's scheduler, waits from
`common.retry_waits`) for `worker.transient_retry_s`, the claim staying in state/claimed/; only then
does the input go to state/failed/, with a reason that says so and how to retry it. Any other
unexpected error is retried `worker.retries` times, then fails the input with its traceback. Bad
inputs (BadInput) never come here: they fail at once.
"""

from __future__ import annotations

import errno
import logging
import time
import traceback

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common import state
from common.config import Config

log = logging.getLogger("segd.worker")
TRANSIENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EIO: "an I/O error",
}
META_SINCE = "transient_since"  # job.meta: time.time() of the first transient failure
META_ERRORS = "unexpected_errors"  # job.meta: count of other unexpected errors


def transient_reason(exc: BaseException) -> str | None:
    """Why `exc` (or an error it was raised from) is transient, or None when it is not."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in TRANSIENT_ERRNOS:
            return TRANSIENT_ERRNOS[current.errno]
        if isinstance(current, RedisConnectionError | RedisTimeoutError):
            return "Redis was lost"
        # torch.cuda.OutOfMemoryError, without importing torch here
        if type(current).__name__ == "OutOfMemoryError" or (
            isinstance(current, RuntimeError) and "out of memory" in str(current).lower()
        ):
            return "the GPU is out of memory"
        current = current.__cause__ or current.__context__
    return None


def _save_meta(job) -> None:
    try:
        job.save_meta()
    except RedisError as exc:  # bookkeeping only: the claim on disk is the record
        log.warning("could not save the meta of job %s: %s", job.id, exc)


def on_unexpected(config: Config, job, job_id: str, name: str, exc: BaseException) -> bool:
    """Decide for an unexpected error of job `job_id` (RQ job `job`, None outside RQ) about input
    `name`: leave the claim for a retry (True), or move it to state/failed/ and stop RQ's retries
    (False). The caller re-raises `exc` either way (RQ then schedules the retry or records the
    failure)."""
    why = transient_reason(exc)
    now = time.time()
    if why and job is not None and config.worker.transient_retry_s > 0:
        since = float(job.meta.setdefault(META_SINCE, now))
        _save_meta(job)
        waited = now - since
        if waited < config.worker.transient_retry_s and job.retries_left:
            log.warning(
                "%s: %s (%s: %s); not the input's fault: retried with back-off, %s retries left",
                name,
                why,
                type(exc).__name__,
                exc,
                job.retries_left,
            )
            return True
        reason = (
            f"{why} ({type(exc).__name__}: {exc}), still after retrying for {waited:.0f} s "
            f"(worker.transient_retry_s = {config.worker.transient_retry_s}); once the cause is "
            f"fixed, `segd retry {job_id}` runs it again"
        )
    else:
        if job is not None:
            errors = int(job.meta.get(META_ERRORS, 0)) + 1
            job.meta[META_ERRORS] = errors
            _save_meta(job)
            if errors <= config.worker.retries and job.retries_left:
                return True
        reason = f"internal error: {type(exc).__name__}: {exc}"
    if job is not None:
        job.retries_left = 0  # RQ records the failure; nothing more to retry
    try:
        state.fail(config.paths.state, job_id, reason, detail=traceback.format_exc())
    except OSError as fail_exc:  # the state folder itself is in trouble: the claim stays
        log.error("job %s: could not move its claim to failed/: %s", job_id, fail_exc)
        return True
    log.warning("failed %s: %s", name, reason)
    return False
