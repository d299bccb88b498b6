"""A worker's heartbeat: a thread that refreshes `segd:heartbeat:<name>` (see common.liveness)
every quarter of `worker.heartbeat_ttl_s`, during jobs too (SimpleWorker runs jobs in the main
thread and RQ sends no heartbeat while one runs).

The name is taken with SET NX: two live processes cannot hold one worker name. A process that finds
its key holding another token (it was frozen past the TTL and another worker took the name) stops
refreshing it and asks itself to shut down.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading

from redis import Redis
from redis.exceptions import RedisError

from common import liveness

log = logging.getLogger("segd.worker")


class Heartbeat:
    """The heartbeat of worker `name` on `connection`, with a TTL of `ttl_s` seconds."""

    def __init__(self, connection: Redis, name: str, ttl_s: float):
        self.connection, self.name, self.ttl_s = connection, name, ttl_s
        self.key = liveness.HEARTBEAT_KEY.format(name=name)
        self.token = secrets.token_hex(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ttl_ms(self) -> int:
        return max(int(self.ttl_s * 1000), 1000)

    def acquire(self) -> bool:
        """Take the name: True when no live heartbeat held it."""
        record = liveness.heartbeat_record(self.token)
        return bool(self.connection.set(self.key, record, nx=True, px=self._ttl_ms()))

    def beat(self) -> bool:
        """Refresh the key; False when another process holds the name now."""
        raw = self.connection.get(self.key)
        if raw is not None and self.token.encode() not in raw:
            return False
        self.connection.set(self.key, liveness.heartbeat_record(self.token), px=self._ttl_ms())
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="segd-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                if not self.beat():
                    log.error(
                        "another worker holds the name %s now (this one was unresponsive for "
                        "over %.0f s); stopping",
                        self.name,
                        self.ttl_s,
                    )
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
            except RedisError as exc:
                log.warning("could not refresh the heartbeat: %s", exc)

    def stop(self) -> None:
        """Stop refreshing and drop the key (a clean exit frees the name at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            raw = self.connection.get(self.key)
            if raw is not None and self.token.encode() in raw:
                self.connection.delete(self.key)
        except RedisError:
            pass
