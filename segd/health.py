"""`segd status --check`: one line per problem and a non-zero exit, for monitoring.

Healthy means all of (each failure is a `CRITICAL` line):
- Redis answers a PING.
- Worker present: at least `health.expected_workers` live workers listen on the segment queue.
  Live = registered in Redis with an unexpired heartbeat (`segd:heartbeat:<name>`, refreshed by a
  thread of the worker during jobs too; it expires `worker.heartbeat_ttl_s` after the worker died,
  on any host) and, for workers on this host, its pid still exists.
- Watcher present: at least `health.expected_watchers` watchers with an unexpired heartbeat
  (`segd:watcher:<host>:<pid>`, refreshed by the watcher's loop; `watcher.heartbeat_ttl_s`).
- No queue is stuck. A queue (segment, video, train) is stuck when all of these hold:
  it has queued jobs and the oldest was enqueued more than `health.stuck_after_s` ago; no job of
  that queue ended (done or failed) in the last `health.stuck_after_s`; and no job of it is
  running within its deadline (RQ's started registry: start + job timeout) on a live worker. A
  busy queue that keeps finishing jobs is never stuck, however long its backlog; one whose
  workers are gone, suspended or hung is.
- Free space: the file systems of paths.outbox and paths.state have at least
  `worker.min_free_bytes` free (below it, workers take no job; the line gives the free bytes).

Warnings (`WARNING` lines; the exit status is 1 as for problems, the prefix tells them apart):
- A region mask has waited in the inbox for its image longer than `health.stuck_after_s` (the
  watcher moves it to state/failed/ after `watcher.orphan_mask_s`).
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path

from redis.exceptions import RedisError
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import BaseWorker

from common import liveness, queues
from common.config import Config
from common.diskspace import low_space
from common.errors import EXIT_OK
from common.liveness import pid_alive
from common.outcomes import LAST_END_KEY
from common.waiting import waiting_masks

EXIT_UNHEALTHY = 1


def live_workers(connection, queue_name: str) -> list[BaseWorker]:
    """Workers registered on `queue_name` that are still alive (see the module docstring)."""
    host = socket.gethostname()
    live = []
    for worker in Worker.all(queue=queues.queue(queue_name, connection)):
        if worker.hostname == host and worker.pid and not pid_alive(worker.pid):
            continue
        if not liveness.worker_alive(connection, worker.name):
            continue
        live.append(worker)
    return live


def _running_on_live_worker(connection, registry_key: str, now: float) -> bool:
    """True when a job of the started registry is within its deadline on a live worker."""
    for member in connection.zrangebyscore(registry_key, now, "+inf"):
        job_id = member.decode().split(":", 1)[0]
        try:
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except Exception:  # gone or unreadable: judge it by its registry entry alone
            return True
        if not job.worker_name or liveness.worker_alive(connection, job.worker_name):
            return True
    return False


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
    if _running_on_live_worker(connection, q.started_job_registry.key, now):
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
    url = queues.shown_redis_url(config)
    found = [str(item) for item in low_space(config)]
    connection = queues.connect(config)
    try:
        connection.ping()
    except (RedisError, OSError) as exc:
        return [*found, f"Redis {url} is unreachable: {exc}"]
    try:
        expected = config.health.expected_workers
        live = live_workers(connection, queues.SEGMENT_QUEUE)
        if len(live) < expected:
            found.append(
                f"worker missing: {len(live)} live on queue {queues.SEGMENT_QUEUE}, expected "
                f"{expected} (health.expected_workers)"
            )
        watchers = liveness.live_watchers(connection)
        if len(watchers) < config.health.expected_watchers:
            found.append(
                f"watcher missing: {len(watchers)} with a live heartbeat, expected "
                f"{config.health.expected_watchers} (health.expected_watchers)"
            )
        for name in queues.QUEUES:
            reason = stuck(connection, name, config.health.stuck_after_s, now)
            if reason:
                found.append(reason)
    except (RedisError, OSError) as exc:
        found.append(f"Redis {url} failed during the check: {exc}")
    return found


def warnings(config: Config, now: float | None = None) -> list[str]:
    """Things a person should look at that do not stop the service (see the module docstring)."""
    now = time.time() if now is None else now
    limit = config.health.stuck_after_s
    return [
        f"mask {mask['name']} has waited {mask['waited_s']:.0f} s for its image "
        f"(health.stuck_after_s = {limit:g}; it goes to state/failed/ after "
        f"watcher.orphan_mask_s = {config.watcher.orphan_mask_s:g})"
        for mask in waiting_masks(Path(config.paths.inbox), now)
        if mask["waited_s"] > limit
    ]


def check(config: Config) -> int:
    """`segd status --check`: print `OK ...`, or one `CRITICAL ...` line per problem and one
    `WARNING ...` line per warning (exit 1 either way)."""
    found = problems(config)
    warned = warnings(config)
    for warning in warned:
        print(f"WARNING {warning}")
    if warned and not found:
        return EXIT_UNHEALTHY
    if not found:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        print(f"OK segd healthy at {now} ({queues.shown_redis_url(config)})")
        return EXIT_OK
    for problem in found:
        print(f"CRITICAL {problem}")
    return EXIT_UNHEALTHY
