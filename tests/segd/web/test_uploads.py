"""segd.web.uploads through POST /upload: dropped files land in the inbox under their own names,
whole or not at all, size-capped, never replacing a file, never outside the inbox."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.segd.web.conftest import client_for, csrf_of


def _post(client, name: str, body, **headers):
    return client.post(
        "/upload",
        content=body,
        headers={"x-csrf-token": csrf_of(client), "x-file-name": quote(name), **headers},
    )


def _inbox(site) -> list[str]:
    return sorted(p.name for p in (site / "inbox").iterdir())


def test_a_dropped_file_lands_in_the_inbox_under_its_own_name(client, site):
    """Accents, spaces, brackets and Chinese characters are kept; the bytes are the file's; no
    temp file is left behind."""
    name = "Zürich 货架 (copy) #2 & 'b'.jpg"
    body = bytes(range(256)) * 100
    response = _post(client, name, body)
    assert response.status_code == 201 and response.json() == {"ok": True, "name": name}
    assert _inbox(site) == [name]
    assert (site / "inbox" / name).read_bytes() == body


def test_an_upload_over_the_cap_is_refused_and_leaves_nothing(site):
    """Above web.max_upload_bytes: 413 with the limit named, whether the size is declared up
    front or only found while streaming; the inbox stays empty (no partial, no temp file)."""
    client = client_for(site, SEGD_WEB__MAX_UPLOAD_BYTES="1000")
    response = _post(client, "big.jpg", b"x" * 1001)
    assert response.status_code == 413
    assert (
        response.json()["error"] == "big.jpg: 1001 bytes is larger than web.max_upload_bytes = 1000"
    )

    def chunks():  # no Content-Length: the cap is found while streaming
        for _ in range(5):
            yield b"y" * 400

    response = _post(client, "streamed.jpg", chunks())
    assert response.status_code == 413
    assert response.json()["error"] == "streamed.jpg: larger than web.max_upload_bytes = 1000"
    assert _inbox(site) == []
    assert _post(client, "fits.jpg", b"z" * 1000).status_code == 201


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../x.jpg", "holds '/'"),
        ("..", "'.', '..'"),
        ("a/b.jpg", "holds '/'"),
        ("a\\b.jpg", "a path from another system"),
        (".hidden.jpg", "starts with '.'"),
        ("x.jpg.part", "names ending in .part are a writer's temp files"),
        ("line\nbreak.jpg", "control characters"),
        ("nul\x00.jpg", "control characters"),
        ("x" * 251 + ".jpg", "longer than 250 bytes"),
        ("", "the upload has no file name"),
    ],
)
def test_unsafe_names_are_refused_with_the_reason(client, site, name, reason):
    """A name that is not one safe path component is a 400 that says why; nothing is written."""
    response = _post(client, name, b"data")
    assert response.status_code == 400
    assert reason in response.json()["error"]
    assert _inbox(site) == []
    assert not (site / "x.jpg").exists()


def test_an_encoded_path_in_the_name_header_cannot_escape_the_inbox(client, site):
    """`..%2f` forms decode to a path and are refused, even double-encoded (kept as a name)."""
    response = client.post(
        "/upload",
        content=b"data",
        headers={"x-csrf-token": csrf_of(client), "x-file-name": "..%2f..%2fescape.jpg"},
    )
    assert response.status_code == 400
    response = client.post(
        "/upload",
        content=b"data",
        headers={"x-csrf-token": csrf_of(client), "x-file-name": "a..%252f..%252fescape.jpg"},
    )
    assert response.status_code == 201 and _inbox(site) == ["a..%2f..%2fescape.jpg"]
    assert not (site / "escape.jpg").exists()


def test_a_name_already_in_the_inbox_is_not_replaced(client, site):
    """409 and the first file's bytes stay."""
    assert _post(client, "a.jpg", b"first").status_code == 201
    response = _post(client, "a.jpg", b"second")
    assert response.status_code == 409
    assert response.json()["error"] == "a.jpg: a file of that name is in the inbox already"
    assert (site / "inbox" / "a.jpg").read_bytes() == b"first"
