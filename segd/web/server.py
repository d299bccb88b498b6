"""Serving the page: uvicorn in a thread of this process, for `segd web` (until SIGTERM/SIGINT)
and for `segd up` (beside its supervisor loop).

The socket is bound here, before uvicorn runs, so a taken port or a refused address is a clear
SegdError in the caller, not a dying thread.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass

from common.config import Config
from common.errors import EXIT_FAILED_INPUTS, EXIT_OK, SegdError
from segd.web import security

log = logging.getLogger("segd.web")


def bind(config: Config) -> socket.socket:
    """A listening socket on web.host:web.port; ConfigError when the address needs a token that
    is not set, SegdError when the port is taken."""
    security.check_binding(config)
    host, port = config.web.host, config.web.port
    try:
        sock = socket.create_server((host.strip("[]"), port), backlog=128)
    except OSError as exc:
        raise SegdError(
            f"cannot serve the web page on {host}:{port} ({exc.strerror}); "
            "change web.host / web.port"
        ) from exc
    return sock


def _server(config: Config):
    import uvicorn

    from segd.web.app import build_app

    settings = uvicorn.Config(
        build_app(config),
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(settings)


def url(config: Config, sock: socket.socket) -> str:
    host = config.web.host
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{sock.getsockname()[1]}/"


def serve(config: Config) -> int:
    """`segd web`: serve until SIGTERM or SIGINT, then exit 0 (the handlers only set a flag;
    uvicorn's own would re-raise the signal after its shutdown)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running = start(config)
    while not stop.wait(1.0):
        if not running.thread.is_alive():
            log.error("the web server stopped unexpectedly")
            return EXIT_FAILED_INPUTS
    running.shutdown()
    return EXIT_OK


@dataclass
class Running:
    """A page served from a thread; `shutdown()` stops it within a few seconds."""

    server: object
    thread: threading.Thread
    address: str

    def shutdown(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout=10)


def start(config: Config) -> Running:
    """Serve the page in a daemon thread (uvicorn installs no signal handlers off the main thread)."""
    sock = bind(config)
    server = _server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="segd-web", daemon=True
    )
    thread.start()
    address = url(config, sock)
    log.info("serving the web page on %s", address)
    return Running(server, thread, address)
