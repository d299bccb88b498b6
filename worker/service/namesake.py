"""Taking a worker name: refused while a live worker holds it (an unexpired heartbeat, on any
host); a provably dead predecessor's job is re-enqueued from its claim on disk.

Dead means: its heartbeat expired (any host), or it is on this host and its pid is gone. A job
that another worker has taken since is left alone, and an input the worker died on more than
`worker.retries` times goes to state/failed/ instead of to a worker again.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from rq import SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import attempts, liveness, queues, state
from common.config import Config
from common.errors import SegdError
from worker.image import placement
from worker.service.heartbeat import Heartbeat

log = logging.getLogger("segd.worker")


def _refuse(name: str, host, pid, ttl_s: float) -> SegdError:
    return SegdError(
        f"a worker named {name} is already running on host {host} (pid {pid}); give this one "
        f"another --name (if that worker is gone, its heartbeat expires within {ttl_s:.0f} s, "
        "worker.heartbeat_ttl_s)"
    )


def take_name(worker: SimpleWorker, heartbeat: Heartbeat, config: Config) -> str | None:
    """Take `worker.name` and start its heartbeat; SegdError when a live worker holds the name.
    Returns the id of a dead predecessor's job this re-enqueued (or failed), if any."""
    connection, name, ttl_s = worker.connection, worker.name, heartbeat.ttl_s
    beat = liveness.read_heartbeat(connection, name)
    if beat is not None:
        host, pid = beat.get("host"), beat.get("pid")
        dead_here = (
            host == socket.gethostname()
            and isinstance(pid, int)
            and pid > 0
            and pid != os.getpid()
            and not liveness.pid_alive(pid)
        )
        if not dead_here:
            raise _refuse(name, host, pid, ttl_s)
        connection.delete(heartbeat.key)  # its process is gone: the name is free
    if not heartbeat.acquire():
        beat = liveness.read_heartbeat(connection, name) or {}
        raise _refuse(name, beat.get("host"), beat.get("pid"), ttl_s)
    heartbeat.start()
    return _recover(worker, config)


def _recover(worker: SimpleWorker, config: Config) -> str | None:
    """The dead predecessor's registration: mark it dead and give its job back to the queue."""
    connection, name = worker.connection, worker.name
    key = worker.redis_worker_namespace_prefix + name
    if not connection.exists(key) or connection.hexists(key, "death"):
        return None
    old = SimpleWorker.find_by_key(
        key, connection, job_class=queues.SegdJob, serializer=JSONSerializer
    )
    if old is None:
        return None
    if (
        old.hostname == socket.gethostname()
        and old.pid
        and old.pid != os.getpid()
        and liveness.pid_alive(old.pid)
    ):
        raise _refuse(name, old.hostname, old.pid, config.worker.heartbeat_ttl_s)
    job_id = old.get_current_job_id()
    old.register_death()
    connection.delete(key)
    if not job_id:
        return None
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        if job.get_status() == JobStatus.STARTED and job.worker_name not in (None, "", name):
            return None  # another worker runs it now
        StartedJobRegistry(job.origin, connection=connection).remove_executions(job)
        job.delete()
    except Exception:
        pass  # already gone: the claim on disk is what matters
    requeue(connection, config, job_id, f"{name} died during job {job_id}")
    return job_id


def requeue(connection, config: Config, job_id: str, why: str) -> None:
    """Enqueue claim `job_id` again after its worker died, unless that exhausts its retries
    (then it goes to state/failed/ with the reason)."""
    claim_dir = state.folder(config.paths.state, state.CLAIMED, job_id)
    if not claim_dir.is_dir():
        return
    try:
        claim: state.Claim | None = state.read_claim(claim_dir)
    except (OSError, ValueError, TypeError):
        claim = None  # failed below all the same; enqueuing it would say why
    reason = attempts.fail_if_exhausted(config.paths.state, job_id, config.worker.retries)
    if reason is not None:
        log.error("%s; failed it: %s", why, reason)
        if claim is not None:  # no run of it comes again to remove what the dead one wrote
            placement.remove_dead_temps(Path(config.paths.outbox), claim.folder, claim.seq)
        return
    queues.enqueue_claim(connection, claim or state.read_claim(claim_dir), config)
    log.warning(
        "%s; enqueued it again (%d deaths so far, at most %d)",
        why,
        attempts.deaths(claim_dir),
        config.worker.retries,
    )
