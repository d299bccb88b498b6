"""`segd status --check`: one line per problem and a non-zero exit, for monitoring.

Healthy means all of:
- Redis answers a PING.
- Worker present: at least `health.expected_workers` live workers listen on the segment queue.
  Live = registered in Redis with an unexpired worker key (RQ drops a worker that stops cleanly;
  a killed one expires after its TTL) and, for workers on this host, its pid still exists.
- No queue is stuck. A queue (segment, video, train) is stuck when all of these hold:
  it has queued jobs and the oldest was enqueued more than `health.stuck_after_s` ago; no job of
  that queue ended (done or failed) in the last `health.stuck_after_s`; and no job of it is
  running within its deadline (RQ's started registry: start + job timeout). A busy queue that
  keeps finishing jobs is never stuck, however long its backlog; one whose workers are gone,
  suspended or hung is.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from worker import queues
from worker.config import Config
from worker.errors import EXIT_OK
from worker.metrics import LAST_END_KEY
from worker.rqworker import _alive

EXIT_UNHEALTHY = 1


def _redacted(url: str) -> str:
    """The Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user + ':' if user else ''}***@{host}"
    return url


def live_workers(connection, queue_name: str) -> list[Worker]:
    """Workers registered on `queue_name` that are still alive (see the module docstring)."""
    host = socket.gethostname()
    live = []
    for worker in Worker.all(queue=queues.queue(queue_name, connection)):
        if worker.hostname == host and worker.pid and not _alive(worker.pid):
            continue
        live.append(worker)
    return live


def stuck(connection, queue_name: str, stuck_after_s: float, now: float) -> str | None:
    """Why `queue_name` is stuck, or None when it is not."""
    q = queues.queue(queue_name, connection)
    count = q.count
    if not count:
        return None
    oldest_id = next(iter(q.get_job_ids(0, 1)), None)
    waited_s = 0.0
    if oldest_id is not None:
        try:
            job = Job.fetch(oldest_id, connection=connection, serializer=JSONSerializer)
            if job.enqueued_at is not None:
                waited_s = now - job.enqueued_at.replace(tzinfo=UTC).timestamp()
        except Exception:  # the job record is gone: RQ skips it; judge by progress alone
            waited_s = float("inf")
    if waited_s < stuck_after_s:
        return None
    last_end = connection.hget(LAST_END_KEY, queue_name)
    if last_end is not None and now - float(last_end) < stuck_after_s:
        return None
    if connection.zcount(q.started_job_registry.key, now, "+inf"):
        return None  # a job is running within its deadline
    ended = (
        f"the last job ended {now - float(last_end):.0f} s ago"
        if last_end is not None
        else "no job of it has ended yet"
    )
    return (
        f"queue {queue_name} is stuck: {count} jobs queued, the oldest for {waited_s:.0f} s, "
        f"none running, and {ended} (health.stuck_after_s = {stuck_after_s:g})"
    )


def problems(config: Config, now: float | None = None) -> list[str]:
    """Every problem found; an empty list means healthy."""
    now = time.time() if now is None else now
    url = _redacted(queues.redis_url(config))
    connection = queues.connect(config)
    try:
        connection.ping()
    except (RedisError, OSError) as exc:
        return [f"Redis {url} is unreachable: {exc}"]
    found = []
    try:
        expected = config.health.expected_workers
        live = live_workers(connection, queues.SEGMENT_QUEUE)
        if len(live) < expected:
            found.append(
                f"worker missing: {len(live)} live on queue {queues.SEGMENT_QUEUE}, expected "
                f"{expected} (health.expected_workers)"
            )
        for name in queues.QUEUES:
            reason = stuck(connection, name, config.health.stuck_after_s, now)
            if reason:
                found.append(reason)
    except (RedisError, OSError) as exc:
        found.append(f"Redis {url} failed during the check: {exc}")
    return found


def check(config: Config) -> int:
    """`segd status --check`: print `OK ...` or one `CRITICAL ...` line per problem."""
    found = problems(config)
    if not found:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"OK segd healthy at {now} ({_redacted(queues.redis_url(config))})")
        return EXIT_OK
    for problem in found:
        print(f"CRITICAL {problem}")
    return EXIT_UNHEALTHY
