"""segd.web.security and the guard: only outbox files are served (encoded `..` forms, absolute
paths, symlinks pointing out), every POST is refused without this page's CSRF token or from
another origin, a token is required off loopback, and by default only loopback is listened on."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys

import pytest
from starlette.routing import Route

from common.errors import ConfigError
from segd.web import security, server
from tests.conftest import ROOT, tiny_config
from tests.segd.web.conftest import client_for, csrf_of

SECRET = "top secret, outside the outbox"
TRAVERSALS = [
    "/files/..%2fsecret.txt",  # site/secret.txt is one level above the outbox
    "/files/%2e%2e%2fsecret.txt",
    "/files/%2E%2E/secret.txt",
    "/files/..%2f..%2fsecret.txt",
    "/files/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/files/%2e%2e/%2e%2e/secret.txt",
    "/files/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/files/truck/..%2f..%2f..%2fsecret.txt",
    "/files/truck/%2e%2e/%2e%2e/secret.txt",
    "/files/%252e%252e%252f%252e%252e%252fsecret.txt",  # double-encoded
    "/files/..%252f..%252fsecret.txt",
    "/files/..%5c..%5csecret.txt",  # backslashes
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/%2F%2Fetc%2Fpasswd",
    "/files/truck/%00..%2f..%2fsecret.txt",
    "/thumbs/..%2f..%2fsecret.txt",
    "/thumbs/%2e%2e",
    "/inputs/..%2f..",
    "/results/..%2f..%2fsecret.txt",
    "/results?folder=..%2f..",
    "/results?folder=%2fetc",
]


@pytest.fixture
def secret(site):
    path = site / "secret.txt"
    path.write_text(SECRET)
    return path


def test_outbox_files_are_served_with_their_types(client):
    """A result's files come back with their bytes and media types, nosniff set."""
    for name, media in [
        ("overlay.jpg", "image/jpeg"),
        ("index.png", "image/png"),
        ("segments.json", "application/json"),
    ]:
        response = client.get(f"/files/truck/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(media)
        assert response.headers["x-content-type-options"] == "nosniff"
    nested = client.get("/files/batch/labpics/color.png")
    assert nested.status_code == 200 and nested.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("url", TRAVERSALS)
def test_encoded_dot_dot_absolute_and_double_encoded_paths_never_leave_the_outbox(
    client, secret, url
):
    """Every `..` form (encoded, double-encoded, backslashes, NUL) and absolute path is a 404
    that contains nothing of the file it aimed at."""
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code)
    assert SECRET not in response.text and "root:x:" not in response.text


def test_a_symlink_inside_the_outbox_pointing_out_is_not_followed(client, site, secret):
    """A link (file or folder) placed in the outbox that leads outside it is refused; hidden
    .tmp- folders (results being written) are not served either."""
    os.symlink(secret, site / "outbox" / "truck" / "leak.json")
    os.symlink(site, site / "outbox" / "escape")
    (site / "outbox" / ".tmp-x").mkdir()
    (site / "outbox" / ".tmp-x" / "manifest.json").write_text("{}")
    for url in (
        "/files/truck/leak.json",
        "/files/escape/secret.txt",
        "/files/.tmp-x/manifest.json",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert SECRET not in response.text
    assert client.get("/results?folder=escape").status_code == 404
    assert "escape" not in client.get("/results").text


def test_the_path_check_itself(tmp_path):
    """outbox_file: plain components inside the root only; links inside the root are fine."""
    root = tmp_path / "out"
    (root / "a").mkdir(parents=True)
    (root / "a" / "f.png").write_bytes(b"x")
    os.symlink(root / "a" / "f.png", root / "a" / "inside.png")
    assert security.outbox_file(root, "a/f.png") == (root / "a" / "f.png").resolve()
    assert security.outbox_file(root, "a/inside.png") == (root / "a" / "f.png").resolve()
    for bad in ("../out/a/f.png", "a/../a/f.png", "/a/f.png", "a//f.png", "a/./f.png", "a", ""):
        assert security.outbox_file(root, bad) is None, bad


def _post_routes(client) -> list[str]:
    urls = []
    for route in client.app.routes:
        if isinstance(route, Route) and "POST" in (route.methods or ()):
            urls.append(
                route.path.replace("{name}", "20261201T000000-abcdef12").replace("{version}", "v1")
            )
    return urls


def test_every_post_without_the_csrf_token_or_with_a_wrong_one_is_refused(client, site):
    """Each state-changing route answers 403 with the reason when the token is missing or wrong,
    and changes nothing (models/current stays v2, the inbox stays empty)."""
    urls = _post_routes(client)
    assert sorted(urls) == sorted(
        [
            "/failures/20261201T000000-abcdef12/retry",
            "/models/rollback",
            "/models/v1/promote",
            "/upload",
        ]
    )
    for url in urls:
        for data in ({}, {"csrf": "wrong"}):
            response = client.post(url, data=data, headers={"x-file-name": "x.jpg"})
            assert response.status_code == 403, (url, data)
            assert "security token is missing or stale" in response.text
        response = client.post(url, headers={"x-csrf-token": "wrong", "x-file-name": "x.jpg"})
        assert response.status_code == 403
    assert (site / "models" / "current").read_text().strip() == "v2"
    assert not any((site / "inbox").iterdir())


def test_a_post_from_another_origin_is_refused_even_with_the_right_token(client, site):
    """Origin of another site, Origin null, or Sec-Fetch-Site cross-site: 403, nothing changes;
    the same request from the page's own origin works."""
    token = csrf_of(client)
    for headers in (
        {"origin": "http://evil.example"},
        {"origin": "http://127.0.0.1:9999"},
        {"origin": "null"},
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
    ):
        response = client.post("/models/rollback", data={"csrf": token}, headers=headers)
        assert response.status_code == 403, headers
        assert "may not change anything here" in response.text
    assert (site / "models" / "current").read_text().strip() == "v2"
    same = client.post(
        "/models/rollback",
        data={"csrf": token},
        headers={"origin": "http://127.0.0.1:9471", "sec-fetch-site": "same-origin"},
    )
    assert same.status_code == 303
    assert (site / "models" / "current").read_text().strip() == "v1"


def test_without_a_token_only_loopback_host_names_are_answered(client):
    """Host 127.0.0.1, localhost or [::1] (with a port) is answered; any other name is a 403, so a
    site rebinding its DNS name to 127.0.0.1 cannot read the page."""
    for host in ("127.0.0.1:9471", "localhost:9471", "[::1]:9471", "127.0.0.1"):
        assert client.get("/", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:9471", "evil.example", "127.0.0.1.evil.example", ""):
        response = client.get("/", headers={"host": host})
        assert response.status_code == 403, host
        assert "answers only to http://127.0.0.1" in response.text


def test_with_a_token_every_request_needs_it(site):
    """web.token set: no or a wrong password is a 401 that asks for it (Basic); the password (any
    user name) or a Bearer token gets in, whatever the Host."""
    token = "correct-horse-battery-staple"
    client = client_for(site, SEGD_WEB__TOKEN=token)

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    for url in ("/", "/files/truck/overlay.jpg", "/static/app.js", "/api/status"):
        response = client.get(url)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith(
            "Basic"
        )
        assert "needs its password" in response.text
        assert client.get(url, headers={"authorization": basic("me", "wrong")}).status_code == 401
        assert client.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    ok = {"authorization": basic("anyone", token), "host": "segd.lab:9471"}
    assert client.get("/", headers=ok).status_code == 200
    assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200


def test_a_non_loopback_host_needs_a_token_of_16_characters(tmp_path):
    """check_binding: 0.0.0.0 without a token, or with a short one, is a ConfigError that says
    what to do; loopback without one, or anywhere with a good one, is fine."""
    with pytest.raises(
        ConfigError, match=r"web.host = '0.0.0.0' is not a loopback address.*web.token"
    ):
        security.check_binding(tiny_config(tmp_path, SEGD_WEB__HOST="0.0.0.0"))
    with pytest.raises(ConfigError, match="web.token has 5 characters; use at least 16"):
        security.check_binding(tiny_config(tmp_path, SEGD_WEB__HOST="::", SEGD_WEB__TOKEN="short"))
    security.check_binding(tiny_config(tmp_path))
    security.check_binding(tiny_config(tmp_path, SEGD_WEB__HOST="localhost"))
    security.check_binding(
        tiny_config(tmp_path, SEGD_WEB__HOST="0.0.0.0", SEGD_WEB__TOKEN="x" * 16)
    )


def test_segd_web_on_a_network_address_without_a_token_exits_with_the_config_code(tmp_path):
    """`segd web` with web.host 0.0.0.0 and no token prints the reason and exits 2 (EXIT_CONFIG:
    systemd does not restart it), listening nowhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env.update(
        SEGD_WEB__HOST="0.0.0.0", SEGD_PATHS__STATE=str(tmp_path / "state"), PYTHONPATH=str(ROOT)
    )
    done = subprocess.run(
        [sys.executable, "-m", "segd", "web"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "segd: web.host = '0.0.0.0' is not a loopback address" in done.stderr


def _other_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_by_default_the_page_listens_on_loopback_only(tmp_path):
    """The default socket is bound to 127.0.0.1; from this machine's other address nothing
    answers on that port."""
    sock = server.bind(tiny_config(tmp_path, SEGD_WEB__PORT="0"))
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1"
        other = _other_address()
        if other is None:
            pytest.skip("this machine has no non-loopback address to try from")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((other, port), timeout=5).close()
    finally:
        sock.close()
