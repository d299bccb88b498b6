"""The watcher's own heartbeat in Redis: `segd:watcher:<host>:<pid>` (see common.liveness),
refreshed from the watcher's loop every quarter of `watcher.heartbeat_ttl_s`, so a watcher that
died or hangs disappears from `segd status --check` within that time."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time

from redis.exceptions import RedisError

from common import liveness

log = logging.getLogger("segd.watcher")


class Beacon:
    def __init__(self, connection, ttl_s: float):
        self.connection, self.ttl_s = connection, ttl_s
        self.key = liveness.WATCHER_KEY.format(host=socket.gethostname(), pid=os.getpid())
        self.token = secrets.token_hex(8)
        self._next = 0.0
        self._warned = False

    def maybe_beat(self, now: float | None = None) -> None:
        """Refresh the key when a quarter of its TTL has passed (called every loop tick)."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + self.ttl_s / 4
        try:
            self.connection.set(
                self.key, liveness.heartbeat_record(self.token), px=int(self.ttl_s * 1000)
            )
            self._warned = False
        except RedisError as exc:
            if not self._warned:
                log.warning("could not refresh the watcher's heartbeat: %s", exc)
                self._warned = True

    def clear(self) -> None:
        try:
            self.connection.delete(self.key)
        except RedisError:
            pass
