"""No command prints the password held in `redis.url`: `segd status` (text and JSON, Redis up or
down) and `segd train` (Redis down, and its `rq info -u` hint) show the URL redacted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.queues import redacted_url
from segd.up import redis_binary
from tests.synthetic import labelled_folder

PASSWORD = "hunter2-S3cret"


@pytest.fixture
def site(tmp_path):
    """A password-protected redis-server on a unix socket, and an env whose redis.url holds the
    password (as `segd systemd install` writes it)."""
    sock = Path(f"/tmp/segd-secret-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}.sock")
    data = tmp_path / "redis-data"
    data.mkdir()
    server = subprocess.Popen(
        [redis_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(data), "--save", "", "--appendonly", "no", "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    for name in ("inbox", "outbox", "state", "models"):
        (tmp_path / name).mkdir()
        env[f"SEGD_PATHS__{name.upper()}"] = str(tmp_path / name)
    env["SEGD_REDIS__URL"] = f"unix://:{PASSWORD}@{sock}"
    env["SEGD_TRAINING__DATASETS_ROOT"] = str(tmp_path / "datasets")
    labelled_folder(tmp_path / "datasets" / "shapes", images=2)
    yield env, sock
    server.terminate()
    server.wait(timeout=10)
    sock.unlink(missing_ok=True)


def _segd(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=env["SEGD_PATHS__STATE"],
    )


def test_redacted_url_masks_passwords_in_userinfo_and_query():
    """Passwords in the user info or a `password=` query are masked; nothing else changes."""
    assert redacted_url(f"redis://:{PASSWORD}@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted_url(f"redis://segd:{PASSWORD}@h/1") == "redis://segd:***@h/1"
    assert redacted_url(f"unix:///s.sock?db=0&password={PASSWORD}") == (
        "unix:///s.sock?db=0&password=***"
    )
    assert redacted_url("unix:///run/segd/redis.sock") == "unix:///run/segd/redis.sock"
    assert redacted_url(f"redis://[::1:{PASSWORD}@x") == "<unparsable URL>"


def test_status_text_and_json_never_show_the_password(site):
    """`segd status` and `segd status --json` reach the password-protected Redis and show its
    URL as unix://:***@<socket>."""
    env, sock = site
    text = _segd(env, "status")
    as_json = _segd(env, "status", "--json")

    assert text.returncode == 0, text.stderr
    assert f"Redis    unix://:***@{sock}: ok" in text.stdout
    assert json.loads(as_json.stdout)["redis"] == {"url": f"unix://:***@{sock}", "ok": True}
    for result in (text, as_json):
        assert PASSWORD not in result.stdout + result.stderr


def test_status_and_train_with_redis_down_never_show_the_password(site):
    """With Redis unreachable, `segd status` says so and `segd train` fails with one line; neither
    prints the password."""
    env, sock = site
    env = {**env, "SEGD_REDIS__URL": f"unix://:{PASSWORD}@{sock}.gone"}
    status = _segd(env, "status")
    train = _segd(env, "train", "shapes")

    assert f"Redis    unix://:***@{sock}.gone: UNREACHABLE" in status.stdout
    assert train.returncode != 0
    assert f"cannot reach Redis at unix://:***@{sock}.gone" in train.stderr
    for result in (status, train):
        assert PASSWORD not in result.stdout + result.stderr


def test_train_hint_shows_the_url_redacted(site):
    """`segd train` (no --follow) enqueues and prints the `rq info -u` hint without the password."""
    env, sock = site
    train = _segd(env, "train", "shapes")

    assert train.returncode == 0, train.stderr
    assert f"rq info -u unix://:***@{sock} train" in train.stdout
    assert PASSWORD not in train.stdout + train.stderr


def test_an_invalid_redis_url_is_reported_without_its_password():
    """A redis.url with a wrong scheme is a config error that shows the URL redacted."""
    from common.config import load_config
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"redis\.url = 'http://:\*\*\*@db:6379/0'") as excinfo:
        load_config(None, environ={"SEGD_REDIS__URL": f"http://:{PASSWORD}@db:6379/0"})
    assert PASSWORD not in str(excinfo.value)
