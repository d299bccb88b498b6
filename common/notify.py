"""systemd's notify protocol (sd_notify), spoken directly: one datagram per message.

Under a `Type=notify` unit systemd sets `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace) and, with `WatchdogSec=`, `$WATCHDOG_USEC` (and `$WATCHDOG_PID`). A service sends
`READY=1` once it serves, `WATCHDOG=1` at least every `WATCHDOG_USEC` (we ping at half of it) and
`STOPPING=1` when it shuts down. Outside systemd every call is a no-op. Standard library only.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("segd.notify")


class Notifier:
    """Sends sd_notify messages to `socket_path`; does nothing when it is None."""

    def __init__(self, socket_path: str | None, watchdog_usec: int | None = None):
        self.address: str | bytes | None = None
        if socket_path:
            # '@name' is a socket in the abstract namespace: a leading NUL byte on the wire.
            self.address = (
                b"\0" + socket_path[1:].encode() if socket_path[0] == "@" else socket_path
            )
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else None
        self._last_ping = float("-inf")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process (no-op when not run by systemd)."""
        env = os.environ if environ is None else environ
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        # The watchdog belongs to the main process only: a child that inherited the variables
        # must not ping on its parent's behalf.
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = None
        return cls(env.get("NOTIFY_SOCKET"), int(usec) if usec and usec.isdigit() else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=value` fields as one datagram; False (and a log line) when it fails."""
        if self.address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog_due(self, now: float | None = None) -> bool:
        """True when a watchdog ping is due (half of WATCHDOG_USEC since the last one)."""
        if self.address is None or self.watchdog_interval_s is None:
            return False
        now = time.monotonic() if now is None else now
        return now - self._last_ping >= self.watchdog_interval_s

    def ping_watchdog(self, now: float | None = None) -> bool:
        """Send `WATCHDOG=1` and restart the interval."""
        self._last_ping = time.monotonic() if now is None else now
        return self.send("WATCHDOG=1")
