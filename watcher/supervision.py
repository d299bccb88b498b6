"""The watcher's own liveness: the inbox observer (restarted when it dies) and the systemd
watchdog pings that vouch for it. A mixin of watcher.service.Watcher, which provides `cfg`,
`inbox`, `tracker`, `connection`, `notifier`, `observer`, `observer_restarts`, `rescan` and
`_health_retry_at`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from common.config import WatcherConfig
from common.notify import Notifier
from watcher.tracker import Handler, Tracker

log = logging.getLogger("segd.watcher")


class Supervised:
    """Observer and watchdog methods; the attributes below are the Watcher's."""

    cfg: WatcherConfig
    inbox: Path
    tracker: Tracker
    connection: Redis
    notifier: Notifier
    observer: BaseObserver | None
    observer_restarts: list[float]
    _health_retry_at: float

    def rescan(self) -> None:
        raise NotImplementedError

    def _start_observer(self) -> None:
        cls = PollingObserver if self.cfg.polling else Observer
        kwargs = {"timeout": self.cfg.poll_interval_s} if self.cfg.polling else {}
        self.observer = cls(**kwargs)
        self.observer.schedule(
            Handler(self.inbox, self.tracker.events, self.cfg.max_depth),
            str(self.inbox),
            recursive=True,
        )
        self.observer.daemon = True
        self.observer.start()

    def observer_healthy(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def _check_observer(self) -> bool:
        """Restart a dead observer (and rescan); give up after 3 deaths in a minute."""
        if self.observer_healthy():
            return True
        now = time.monotonic()
        self.observer_restarts = [t for t in self.observer_restarts if now - t < 60] + [now]
        if len(self.observer_restarts) > 3:
            log.error(
                "the inbox observer keeps dying; exiting so the service manager restarts the watcher"
            )
            return False
        log.warning("the inbox observer died; restarting it and rescanning %s", self.inbox)
        self._start_observer()
        self.rescan()
        return True

    def healthy(self) -> bool:
        """The observer is alive and Redis answers: what a systemd watchdog ping vouches for."""
        if not self.observer_healthy():
            return False
        try:
            return bool(self.connection.ping())
        except (RedisError, OSError):
            return False

    def heartbeat(self, now: float | None = None) -> bool:
        """Ping the systemd watchdog when a ping is due and the watcher is healthy.

        An unhealthy watcher stays silent (looked at again after a second), so systemd restarts
        it once `WatchdogSec` passes. Returns whether a ping was sent.
        """
        now = time.monotonic() if now is None else now
        if not self.notifier.watchdog_due(now) or now < self._health_retry_at:
            return False
        if not self.healthy():
            if self._health_retry_at == 0.0:
                log.warning("unhealthy (observer dead or Redis unreachable): no watchdog pings")
            self._health_retry_at = now + 1.0
            return False
        self._health_retry_at = 0.0
        return self.notifier.ping_watchdog(now)
