"""Who may use the page and which files it may serve.

- Binding: loopback by default; any other address needs `web.token` (checked before listening).
- Access: with a token configured, every request must carry it (HTTP Basic password, any user
  name, so a browser asks for it; or `Authorization: Bearer <token>`). Without one (loopback
  only), the Host header must name a loopback address: a page elsewhere cannot reach this one by
  rebinding a DNS name to 127.0.0.1.
- Cross-site requests: every state-changing request (POST) must carry this process's CSRF token
  (form field `csrf` or header `X-CSRF-Token`), which only pages served from here contain, and
  must not come from another origin (`Origin`, `Sec-Fetch-Site`).
- Files: only regular files inside the outbox, named by plain path components (no `..`, no
  hidden names), whose real path (symlinks resolved) stays inside it.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

from common.config import Config
from common.errors import ConfigError

MIN_TOKEN_CHARS = 16
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = ("localhost", "localhost.")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(config: Config) -> None:
    """ConfigError unless the page may listen where configured: loopback, or a token is set."""
    web = config.web
    if is_loopback(web.host):
        if web.token is not None and len(web.token) < MIN_TOKEN_CHARS:
            raise ConfigError(_short_token(web.token))
        return
    if not web.token:
        raise ConfigError(
            f"web.host = {web.host!r} is not a loopback address: the page would be open to the "
            "network without a password. Set web.token (e.g. SEGD_WEB__TOKEN=$(openssl rand "
            "-hex 24) in the secrets file segd.env), or keep web.host = 127.0.0.1 and reach it "
            "through an SSH tunnel"
        )
    if len(web.token) < MIN_TOKEN_CHARS:
        raise ConfigError(_short_token(web.token))


def _short_token(token: str) -> str:
    return (
        f"web.token has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
        "(e.g. openssl rand -hex 24)"
    )


def token_matches(authorization: str | None, token: str) -> bool:
    """True when an Authorization header carries `token` (Basic password or Bearer)."""
    if not authorization:
        return False
    scheme, _, value = authorization.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer":
        given = value
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return False
        given = decoded.partition(":")[2]
    else:
        return False
    return hmac.compare_digest(given.encode(), token.encode())


def host_allowed(host_header: str | None) -> bool:
    """True when the Host header names a loopback address (for a page without a token)."""
    if not host_header:
        return False
    if host_header.startswith("["):  # [::1]:9471
        host = host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    else:
        host = host_header.split(":", 1)[0]
    return is_loopback(host)


def new_csrf_token() -> str:
    """A fresh CSRF token (one per process: pages from before a restart must be reloaded)."""
    return secrets.token_urlsafe(32)


def csrf_problem(
    method: str, headers: dict[str, str], given: str | None, expected: str
) -> str | None:
    """Why a state-changing request is refused as cross-site, or None when it is allowed.

    `headers`: lower-case names; `given`: the token the request carried (field or header).
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return None
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "a request from another site (Sec-Fetch-Site) may not change anything here"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
            return f"a request from another origin ({origin}) may not change anything here"
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        return "the form's security token is missing or stale; reload the page and try again"
    return None


def outbox_file(outbox: Path, relative: str) -> Path | None:
    """The real path of the outbox file `relative` names, or None when it must not be served.

    `relative` is the URL path after `/files/`, already percent-decoded once by the server. Every
    component must be a plain name (not empty, `.`, `..`, hidden, or with a backslash or NUL);
    the real path must stay inside the outbox and be a regular file.
    """
    parts = relative.split("/")
    if not parts or any(not plain_name(p) for p in parts):
        return None
    root = Path(os.path.realpath(outbox))
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if not real.is_relative_to(root) or real == root:
        return None
    try:
        info = os.stat(real)
    except OSError:
        return None
    return real if stat.S_ISREG(info.st_mode) else None


def outbox_folder(outbox: Path, relative: str) -> Path | None:
    """Like `outbox_file`, for a folder inside the outbox (a result or an inbox folder)."""
    parts = relative.strip("/").split("/") if relative.strip("/") else []
    if any(not plain_name(p) for p in parts):
        return None
    root = Path(os.path.realpath(outbox))
    real = Path(os.path.realpath(root.joinpath(*parts)))
    if not real.is_relative_to(root) or not real.is_dir():
        return None
    return real


def plain_name(part: str) -> bool:
    """True for one plain path component: not empty, '.', '..', hidden, or with '\\' or NUL."""
    return (
        bool(part)
        and part not in (".", "..")
        and not part.startswith(".")
        and "\\" not in part
        and "\x00" not in part
        and len(os.fsencode(part)) <= 255
    )
