"""Reconciling one claim with Redis: which claimed jobs need enqueuing again, and which inputs
have killed their workers too often.

A claim needs a job when Redis has none for it (lost, flushed or replaced Redis), when its job
ended without moving the claim (failed, stopped, canceled: e.g. RQ's abandoned-job handling),
when its job is STARTED by a worker whose heartbeat has expired (the worker died, on any host: its
job is detected within `worker.heartbeat_ttl_s` plus one reconcile interval), or when its job is
QUEUED but in no queue at two reconciles in a row (`Listing`): a worker took it from the queue
and died before it registered it as started (RQ pops a job, then registers it; a SIGKILL in
between leaves it nowhere, and nothing in RQ ever runs it). A death counts
against the input (common.attempts): one the worker died on more than `worker.retries` times goes
to state/failed/ instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

from redis.exceptions import RedisError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from common import attempts, liveness, queues, state
from common.config import Config
from common.durable import durable_rename

log = logging.getLogger("segd.watcher")
# A job in these states whose claim is still in claimed/ needs a new one (FINISHED: the same
# content was claimed again after the outbox got another model version's result).
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


class Listing:
    """The job ids in the image and video queues, read at most once per reconcile (when the
    first QUEUED job is looked at), and the QUEUED jobs found in none of them: `lost` is True for
    a job missing at this reconcile and the one before (a worker that takes a job registers it
    within milliseconds)."""

    NAMES = (queues.SEGMENT_QUEUE, queues.VIDEO_QUEUE)

    def __init__(self) -> None:
        self.listed: set[str] | None = None  # None: not read at this reconcile yet
        self.missing: set[str] = set()  # QUEUED, in no queue, at the last reconcile
        self._missing_now: set[str] = set()

    def refresh(self) -> None:
        """A new reconcile starts: the queues are read again when needed."""
        self.missing, self._missing_now = self._missing_now, set()
        self.listed = None

    def lost(self, connection, job: Job) -> bool:
        """True when QUEUED `job` is in no queue for the second reconcile running; it is then
        taken out of RQ's intermediate lists too, so RQ's maintenance does not fail it later.
        RedisError propagates."""
        if self.listed is None:
            self.listed = {
                raw.decode() if isinstance(raw, bytes) else str(raw)
                for name in self.NAMES
                for raw in connection.lrange(queues.queue(name, connection).key, 0, -1)
            }
        if job.id in self.listed:
            return False
        self._missing_now.add(job.id)
        if job.id not in self.missing:
            return False
        for name in self.NAMES:
            connection.lrem(queues.queue(name, connection).intermediate_queue_key, 0, job.id)
        return True


def needs_job(
    connection, config: Config, made: state.Claim, listing: Listing | None = None
) -> bool:
    """True when claim `made` must be enqueued (again); False when its job is queued or running
    on a live worker, or when it was just failed for killing its workers. `listing`: the queues
    as read at this reconcile (None: a QUEUED job is taken to be in its queue). RedisError
    propagates."""
    job, status = None, None
    # A re-keyed claim runs under the RQ job of the id it was claimed as, then under its own.
    for rq_id in dict.fromkeys(filter(None, (made.run_as, made.job_id))):
        try:
            job = Job.fetch(rq_id, connection=connection, serializer=queues.JSONSerializer)
            status = job.get_status(refresh=False)
            break
        except RedisError:
            raise
        except Exception:  # NoSuchJobError or an unreadable record
            job, status = None, None
    if status == JobStatus.STARTED and job is not None:
        worker = job.worker_name
        if not worker or liveness.worker_alive(connection, worker):
            return False
        log.warning("worker %s died during job %s (its heartbeat expired)", worker, made.job_id)
        StartedJobRegistry(job.origin, connection=connection).remove_executions(job)
    elif status == JobStatus.QUEUED and job is not None and listing is not None:
        if not listing.lost(connection, job):
            return False
        log.warning(
            "job %s was taken from its queue by a worker that died before it started it",
            made.job_id,
        )
    elif status is not None and status not in ENDED:
        return False
    if job is not None:
        job.delete()
    claim_dir = Path(config.paths.state) / state.CLAIMED / made.job_id
    reason = attempts.fail_if_exhausted(config.paths.state, made.job_id, config.worker.retries)
    if reason is not None:
        log.error("failed %s: %s", made.image, reason)
        return False
    return claim_dir.is_dir()


def finish_rekey(folder: Path, made: state.Claim) -> state.Claim | None:
    """A claim folder whose claim.json names another job id: a worker died while re-keying it to
    the model version that runs (claim.json is rewritten first, then the folder renamed). Finish
    the rename; None when the target exists (left for the next look)."""
    target = folder.parent / made.job_id
    if target.exists() or not state.JOB_ID_PATTERN.fullmatch(made.job_id):
        return None
    durable_rename(folder, target)
    return made
