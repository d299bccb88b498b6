"""Who is alive: the names workers register under and the records each publishes about itself.

Each worker keeps `segd:worker:<name>` (JSON: host, pid, device, model version, queues) in Redis;
`segd status`, the health check and the metrics exporter read it. Liveness is a separate, short
heartbeat: `segd:heartbeat:<name>` (JSON: host, pid, token, time) with a TTL of
`worker.heartbeat_ttl_s`, refreshed by a thread of the worker every quarter of that, during jobs
too. A worker whose heartbeat has expired is dead, whatever host it was on. The watcher keeps
`segd:watcher:<host>:<pid>` the same way from its loop (`watcher.heartbeat_ttl_s`).
"""

from __future__ import annotations

import json
import os
import socket
import time

INFO_KEY = "segd:worker:{name}"  # host, device, model version: what `segd status` shows
HEARTBEAT_KEY = "segd:heartbeat:{name}"  # expires unless the live worker refreshes it
WATCHER_KEY = "segd:watcher:{host}:{pid}"  # expires unless the live watcher refreshes it
WATCHER_PATTERN = "segd:watcher:*"


def default_name() -> str:
    """`segd-<host>-<slot>`: one slot per GPU (CUDA_VISIBLE_DEVICES), else `cpu`."""
    slot = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "_") or "cpu"
    return f"segd-{socket.gethostname()}-{slot}"


def pid_alive(pid: int) -> bool:
    """True while a process of this host with that pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_info(raw: bytes | str | None) -> dict | None:
    """A worker's `segd:worker:<name>` record as a dict; {} when absent, None when unreadable
    (not JSON, or not an object): callers skip it and count it, they never raise."""
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def live_workers(connection) -> tuple[list, int]:
    """(the RQ workers registered in Redis, how many registrations could not be read).

    Each worker is read on its own, so one hash with an odd date or field (a foreign tool, a
    version skew) drops only that worker instead of failing `Worker.all` for everyone.
    """
    from redis.exceptions import RedisError
    from rq import Worker

    workers, bad = [], 0
    for key in Worker.all_keys(connection=connection):
        try:
            worker = Worker.find_by_key(key, connection=connection)
        except RedisError:
            raise
        except Exception:
            bad += 1
            continue
        if worker is not None:
            workers.append(worker)
    return workers, bad


def heartbeat_record(token: str) -> str:
    """The JSON a live process writes into its heartbeat key."""
    return json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "at": time.time()}
    )


def read_heartbeat(connection, name: str) -> dict | None:
    """The live heartbeat of worker `name` ({"host", "pid", "token", "at"}), or None when it
    expired (the worker is dead or was never started)."""
    raw = connection.get(HEARTBEAT_KEY.format(name=name))
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def worker_alive(connection, name: str) -> bool:
    """True while worker `name` has an unexpired heartbeat and, when it is on this host, its
    process still exists (a SIGKILLed worker of this host is dead at once)."""
    beat = read_heartbeat(connection, name)
    if beat is None:
        return False
    pid = beat.get("pid")
    if beat.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
        return pid_alive(pid)
    return True


def live_watchers(connection) -> list[dict]:
    """The heartbeats of the watchers alive now."""
    found = []
    for key in connection.scan_iter(match=WATCHER_PATTERN, count=100):
        raw = connection.get(key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        pid = data.get("pid")
        if data.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
            if not pid_alive(pid):
                continue  # SIGKILLed on this host: its key has not expired yet
        found.append(data)
    return found
