"""What the outbox holds for an input: the published result's manifest, read by the watcher (a
re-drop is a duplicate only of the version that made the published result) and the workers.

A result is published under `<outbox>/<inbox folder>/<stem>/`, or, when a different picture holds
that name, under the first free of `<stem>~2`, `<stem>~3`, ... (worker.image.placement chooses;
`candidates` and `locate` here follow the same rule, read-only).

Standard library only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

MANIFEST_FILE = "manifest.json"
COLLISION_MARK = "~"


def candidates(name: str) -> Iterator[str]:
    """`name`, `name~2`, `name~3`, ...: the names a result (or a mirrored folder) may take."""
    yield name
    n = 2
    while True:
        yield f"{name}{COLLISION_MARK}{n}"
        n += 1


def read_manifest(folder: Path) -> dict | None:
    """`<folder>/manifest.json` as a dict, or None when there is none (readable)."""
    try:
        data = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mirrored(outbox: str | os.PathLike, folder: str) -> Path | None:
    """The existing outbox folder that mirrors inbox folder `folder` ('/'-separated, '' = the
    outbox itself): per component the first of `candidates` that is a folder without a
    manifest (not a result). None when it does not exist yet."""
    current = Path(outbox)
    for part in folder.split("/") if folder else []:
        for name in candidates(part):
            path = current / name
            if not os.path.lexists(path):
                return None
            if path.is_dir() and not path.is_symlink() and read_manifest(path) is None:
                break
        current = path
    return current


def locate(outbox: str | os.PathLike, folder: str, stem: str, sha256: str | None) -> dict | None:
    """The manifest of the published result of the input with `sha256` from inbox folder
    `folder` and stem `stem` (under `stem`, `stem~2`, ...), or None when none is published."""
    parent = mirrored(outbox, folder)
    if parent is None or sha256 is None:
        return None
    for name in candidates(stem):
        path = parent / name
        if not os.path.lexists(path):
            return None
        data = read_manifest(path)
        if data is not None and (data.get("input") or {}).get("sha256") == sha256:
            return data
    return None  # not reached: candidates() never ends


def manifest(outbox: str | os.PathLike, stem: str) -> dict | None:
    """`<outbox>/<stem>/manifest.json` as a dict, or None when nothing (readable) is published."""
    return read_manifest(Path(outbox) / stem)


def model_version(data: dict | None) -> str | None:
    """The registry version a published result was made with (None when unknown)."""
    model = (data or {}).get("model")
    return model.get("model_version") if isinstance(model, dict) else None


def claim_seq(data: dict | None) -> int:
    """The claim sequence a published result came from (0 when unknown): a later claim wins."""
    try:
        return int((data or {}).get("claim_seq") or 0)
    except (TypeError, ValueError):
        return 0
