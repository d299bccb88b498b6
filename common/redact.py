"""Secrets out of what segd prints: the one way a URL (Redis's above all) is shown.

Standard library only, so the config module can use it for its own error messages.
"""

from __future__ import annotations

import urllib.parse

SECRET_QUERY_KEYS = frozenset({"password", "pass", "pwd", "token", "secret", "auth"})


def redacted_url(url: str) -> str:
    """`url` with any password replaced by `***`: the one way segd shows a Redis URL.

    `redis://user:pw@host:6379/0` → `redis://user:***@host:6379/0`; `redis://:pw@host` →
    `redis://:***@host`; a `password=` (or `token=`...) query value is masked too. A URL that
    does not parse is shown as `<unparsable URL>` rather than risk printing a secret.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            credentials, _, host = netloc.rpartition("@")
            user, has_password, _password = credentials.partition(":")
            netloc = f"{user}:***@{host}" if has_password else f"{user}@{host}"
        query = parts.query
        if query:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
            query = "&".join(
                f"{urllib.parse.quote(key)}="
                + ("***" if key.lower() in SECRET_QUERY_KEYS else urllib.parse.quote(value))
                for key, value in pairs
            )
    except ValueError:
        return "<unparsable URL>"
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if netloc or url.startswith(f"{shown}//"):
        shown += f"//{netloc}"
    shown += parts.path
    if query:
        shown += f"?{query}"
    return shown
