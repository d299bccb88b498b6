"""common.notify and the watcher's use of it: READY after the first rescan, WATCHDOG pings only
while the observer and Redis are healthy, against a real datagram socket bound by the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from common.config import load_config
from common.notify import Notifier


@pytest.fixture
def notify_socket(tmp_path):
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def _pending(sock: socket.socket) -> list[str]:
    """Every datagram already delivered (unix datagrams are queued when sent; no waiting)."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.setblocking(True)


def test_messages_reach_a_path_socket_and_an_abstract_one(notify_socket):
    """READY, WATCHDOG, STATUS and STOPPING arrive as datagrams; '@' names the abstract namespace."""
    path, sock = notify_socket
    notifier = Notifier(str(path), watchdog_usec=2_000_000)
    assert notifier.ready("watching x") and notifier.ping_watchdog() and notifier.stopping()
    assert _pending(sock) == ["READY=1\nSTATUS=watching x", "WATCHDOG=1", "STOPPING=1"]
    assert notifier.watchdog_interval_s == 1.0  # half of WATCHDOG_USEC

    name = f"segd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind(b"\0" + name.encode())
        assert Notifier(f"@{name}").ready()
        assert abstract.recv(100) == b"READY=1"


def test_without_systemd_nothing_is_sent_and_a_foreign_watchdog_pid_is_ignored(notify_socket):
    """No NOTIFY_SOCKET: every call is a no-op. WATCHDOG_PID of another process: no watchdog."""
    path, sock = notify_socket
    quiet = Notifier.from_env({})
    assert not quiet.enabled and not quiet.ready() and not quiet.watchdog_due()
    inherited = Notifier.from_env(
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    )
    assert inherited.enabled and not inherited.watchdog_due()
    own = Notifier.from_env(
        {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert own.watchdog_due(now=100.0)
    own.ping_watchdog(now=100.0)
    assert not own.watchdog_due(now=100.4) and own.watchdog_due(now=100.5)
    assert _pending(sock) == ["WATCHDOG=1"]


def test_watchdog_pings_stop_when_the_observer_dies_or_redis_goes_away(site, notify_socket):
    """The watcher pings while its observer runs and Redis answers; a stopped observer or a
    killed Redis silences it (systemd then restarts the watcher)."""
    from watcher.service import Watcher

    path, sock = notify_socket
    watcher = Watcher(load_config(None, site.env))
    watcher.notifier = Notifier(str(path), watchdog_usec=1_000_000)
    try:
        watcher._start_observer()
        assert watcher.heartbeat(now=1000.0)
        assert not watcher.heartbeat(now=1000.1)  # not due yet
        assert _pending(sock) == ["WATCHDOG=1"]

        watcher.observer.stop()
        watcher.observer.join()
        assert not watcher.heartbeat(now=1010.0) and not watcher.heartbeat(now=1020.0)
        assert _pending(sock) == []

        watcher._start_observer()  # what _check_observer does: healthy again, pings again
        assert watcher.heartbeat(now=1030.0)
        assert _pending(sock) == ["WATCHDOG=1"]

        site.kill_redis()
        assert not watcher.heartbeat(now=1040.0) and not watcher.heartbeat(now=1050.0)
        assert _pending(sock) == []
    finally:
        watcher.close()


def test_segd_watch_reports_ready_pings_the_watchdog_and_says_stopping(site, notify_socket):
    """`segd watch` under a notify socket: READY=1 once it watches (after the first rescan),
    then WATCHDOG=1 pings; SIGTERM gives STOPPING=1 and exit 0."""
    path, sock = notify_socket
    site.inbox.rmdir()
    env = {**site.env, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "segd", "watch"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        sock.settimeout(60)
        first = sock.recv(4096).decode()
        assert first.startswith("READY=1\nSTATUS=watching ")
        assert site.inbox.is_dir()  # it set up its folders before READY
        assert sock.recv(4096) == b"WATCHDOG=1"
        assert sock.recv(4096) == b"WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = _pending(sock)
    assert rest[-1] == "STOPPING=1" and set(rest[:-1]) <= {"WATCHDOG=1"}
