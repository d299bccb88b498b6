"""Resumable HTTP downloads that never splice two different files.

A download writes `<file>.part` and, beside it, `<file>.part.json`: the URL and the server's
validators (ETag, Last-Modified) and total length of the file being fetched. A later call
resumes only when it can prove it is still the same file:

- it sends `Range: bytes=<have>-` with `If-Range: <validator>` (a strong ETag, else
  Last-Modified), so a server whose file changed answers 200 with the whole new file;
- a 206 answer must carry `Content-Range: bytes <have>-<total - 1>/<total>` with the saved total
  (and the saved ETag when it sends one);
- a partial file without saved validators, or any other answer, restarts from zero.

Redirects are followed only to https, or to the scheme of the URL asked for (a configured
`http://` mirror may redirect within http); `ftp://`, `file://` and https → http are refused.
Standard library only (urllib), plus tqdm for the progress bar.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.errors import FetchError

CHUNK_BYTES = 1 << 20
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


@dataclass
class Validators:
    """What identifies the file a `.part` holds the start of."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    total: int | None = None

    @property
    def if_range(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified (weak ETags may not be used)."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _load_meta(part: Path, url: str) -> Validators | None:
    try:
        data = json.loads(meta_path(part).read_text())
        meta = Validators(**data)
    except (OSError, ValueError, TypeError):
        return None
    return meta if meta.url == url else None


def _save_meta(part: Path, meta: Validators) -> None:
    tmp = meta_path(part).with_name(f".{meta_path(part).name}.tmp")
    tmp.write_text(json.dumps(asdict(meta)))
    os.replace(tmp, meta_path(part))


def discard(part: Path) -> None:
    """Remove a partial download and its validators."""
    part.unlink(missing_ok=True)
    meta_path(part).unlink(missing_ok=True)


class SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to https, or to the scheme of the URL first asked for."""

    def __init__(self, first_url: str):
        super().__init__()
        self.allowed = {"https", urllib.parse.urlsplit(first_url).scheme.lower()}

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urljoin(req.full_url, newurl)
        scheme = urllib.parse.urlsplit(target).scheme.lower()
        if scheme not in self.allowed or scheme not in ("http", "https"):
            raise FetchError(
                f"{req.full_url}: redirected to {target}, refused (only https, or "
                f"{'/'.join(sorted(self.allowed))} as asked for, is followed)"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, headers: dict[str, str], timeout_s: float):
    """urlopen with safe redirects; returns the response, or the HTTPError for a 416."""
    opener = urllib.request.build_opener(SafeRedirects(url))
    request = urllib.request.Request(url, headers={"User-Agent": "segd", **headers})
    try:
        return opener.open(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc
        raise


def _resumed_total(response, have: int, meta: Validators) -> int | None:
    """The file's total length when a 206 answer continues exactly the saved partial file (its
    Content-Range starts at `have`, runs to the end, and names the saved total and ETag)."""
    match = CONTENT_RANGE.match(response.headers.get("Content-Range") or "")
    if match is None:
        return None
    start, end, total = (int(g) for g in match.groups())
    etag = response.headers.get("ETag")
    same = (
        start == have
        and end == total - 1
        and (meta.total is None or total == meta.total)
        and (etag is None or meta.etag is None or etag == meta.etag)
    )
    return total if same else None


def download(url: str, part: Path, *, timeout_s: float, progress: bool, desc: str) -> bool:
    """Download `url` into `part`, resuming a partial download when that is provably safe.

    Returns True when the file was resumed (some bytes came from an earlier call), False for a
    fresh whole download. Raises urllib's errors for the caller to word, and FetchError for a
    refused redirect, a short download ("run again to resume") or a server that keeps
    answering ranges it was not asked for.
    """
    shown: dict[str, Any] = {"progress": progress, "desc": desc}
    have = part.stat().st_size if part.exists() else 0
    meta = _load_meta(part, url) if have else None
    if have and (meta is None or meta.if_range is None):
        discard(part)  # no proof of which file this is the start of: start over
        have, meta = 0, None
    headers: dict[str, str] = (
        {"Range": f"bytes={have}-", "If-Range": meta.if_range}
        if meta and meta.if_range and have
        else {}
    )
    response = _open(url, headers, timeout_s)
    if have and meta:
        if response.status == 416:
            unsatisfied = UNSATISFIED_RANGE.match(response.headers.get("Content-Range") or "")
            response.close()
            if unsatisfied and int(unsatisfied.group(1)) == have == meta.total:
                return True  # the partial file was already whole
        elif response.status == 206 and (total := _resumed_total(response, have, meta)):
            _receive(response, part, url, append=True, have=have, total=total, **shown)
            return True
        elif response.status == 200:
            return _fresh(response, url, part, **shown)
        else:
            response.close()
        discard(part)  # a range answer that does not continue our file: start over
        response = _open(url, {}, timeout_s)
    if response.status != 200:
        response.close()
        raise FetchError(f"{url}: HTTP {response.status} to a request for the whole file")
    return _fresh(response, url, part, **shown)


def _fresh(response, url: str, part: Path, *, progress: bool, desc: str) -> bool:
    """Write a 200 answer's whole body to `part`, saving its validators first."""
    length = response.headers.get("Content-Length")
    meta = Validators(
        url=url,
        etag=response.headers.get("ETag"),
        last_modified=response.headers.get("Last-Modified"),
        total=int(length) if length is not None else None,
    )
    _save_meta(part, meta)
    shown: dict[str, Any] = {"progress": progress, "desc": desc}
    _receive(response, part, url, append=False, have=0, total=meta.total, **shown)
    return False


def _receive(
    response,
    part: Path,
    url: str,
    *,
    append: bool,
    have: int,
    total: int | None,
    desc: str,
    progress: bool,
) -> None:
    """Write the body of `response` to `part` (appended after `have` bytes, or from zero)."""
    from tqdm import tqdm  # deferred: only downloads need it

    with response:
        try:
            with (
                open(part, "ab" if append else "wb") as out,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=desc,
                    disable=not progress,
                ) as bar,
            ):
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except (OSError, urllib.error.URLError) as exc:
            raise FetchError(
                f"{url}: download interrupted after {part.stat().st_size} bytes ({exc}); "
                "run the same command again to resume"
            ) from None
    if total is not None and part.stat().st_size != total:
        raise FetchError(
            f"{url}: got {part.stat().st_size} of {total} bytes; run the same command again to resume"
        )
