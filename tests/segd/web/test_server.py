"""segd.web.server and `segd web [--config FILE]`: a real uvicorn on a real socket, raw HTTP
requests that no client library normalised, a clean stop on SIGTERM, and `segd up`'s page."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import yaml

from segd import up
from tests.conftest import ROOT, tiny_config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listened on port {port}")


def raw_get(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send `GET <target>` exactly as written (no normalisation of `..`) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_segd_web_serves_the_config_files_folders_and_refuses_raw_traversals(tmp_path):
    """`segd web --config FILE` listens on web.port of that file; literal and encoded `..` in the
    request line never reach a file outside the outbox; SIGTERM stops it with exit 0."""
    site = tmp_path / "site"
    (site / "outbox" / "r").mkdir(parents=True)
    (site / "outbox" / "r" / "segments.json").write_text('{"segments": []}')
    (site / "secret.txt").write_text("SECRET-OUTSIDE")
    port = free_port()
    config_file = site / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "paths": {k: str(site / k) for k in ("inbox", "outbox", "state", "models")},
                "web": {"port": port},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "segd", "web", "--config", str(config_file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_listening(port, proc)
        assert raw_get(port, "/files/r/segments.json")[0] == 200
        for target in (
            "/files/../secret.txt",
            "/files/r/../../secret.txt",
            "/files/..%2fsecret.txt",
            "/files/%2e%2e/secret.txt",
            "/files/%2e%2e%2fsecret.txt",
            "/files/r/%2e%2e%2f%2e%2e%2fsecret.txt",
            "/files/%252e%252e%252fsecret.txt",
            "/files//" + str(site / "secret.txt").lstrip("/"),
            "/files/" + str(site / "secret.txt"),
            "/thumbs/../../secret.txt",
        ):
            status, data = raw_get(port, target)
            assert status in (400, 404), (target, status)
            assert b"SECRET-OUTSIDE" not in data, target
        status, data = raw_get(port, "/", host="evil.example")
        assert status == 403
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert b"<h2>Status</h2>" in response.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_segd_up_runs_without_the_page_when_its_port_is_taken(tmp_path, caplog):
    """`segd up`'s page (in its own process) is optional: a taken port is a warning naming the
    port and the keys to change, and the rest of the service still starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tiny_config(tmp_path, SEGD_WEB__PORT=str(port))
        with caplog.at_level(logging.WARNING, logger="segd.up"):
            assert up._start_web(config, None) is None
    assert f"cannot serve the web page on 127.0.0.1:{port}" in caplog.text
    assert "change web.host / web.port; running without the web page" in caplog.text


def test_segd_up_serves_the_page_from_a_thread_and_stops_it(tmp_path):
    """The page `segd up` starts answers on web.port and is gone after shutdown()."""
    port = free_port()
    running = up._start_web(tiny_config(tmp_path, SEGD_WEB__PORT=str(port)), None)
    assert running is not None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/models") as response:
                    assert response.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        running.shutdown()
    assert not running.thread.is_alive()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        raise AssertionError("still listening after shutdown")
    except ConnectionRefusedError:
        pass
