"""The ASGI guard in front of every route: who may ask (token or loopback Host), and the headers
that keep the page from being framed, sniffed or made to run foreign scripts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from segd.web import security

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer makes a form post say Origin: null
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
]


class Guard:
    """Refuses requests without the token (401, asking for it) or, without a token, whose Host
    is not a loopback name (403: DNS rebinding); adds SECURITY_HEADERS to every response."""

    def __init__(self, app: Callable, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None:
            if not security.token_matches(headers.get("authorization"), self.token):
                await _answer(
                    send,
                    401,
                    "this page needs its password (web.token)",
                    [(b"www-authenticate", b'Basic realm="segd", charset="UTF-8"')],
                )
                return
        elif not security.host_allowed(headers.get("host")):
            await _answer(
                send,
                403,
                "this page answers only to http://127.0.0.1 or http://localhost "
                "(set web.token to reach it by another name)",
            )
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _answer(send: Send, status: int, text: str, extra: list | None = None) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
