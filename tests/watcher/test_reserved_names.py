"""Inbox entries named like segd's own files in a job's state folder (claim.json, error.json,
duplicates) are refused with a reason and lose nothing, also across a watcher restart that finds
one half-claimed by an older segd."""

from __future__ import annotations

import json
import os

from common import names
from tests.service_helpers import Service
from watcher.inbox import Kind, classify

RESERVED = ("claim.json", "error.json", "duplicates")


def _frames(folder, seed: int) -> dict[str, bytes]:
    """A folder of three 'frames' (the watcher never decodes a refused entry)."""
    folder.mkdir(parents=True)
    frames = {f"{i:03d}.jpg": os.urandom(64) + bytes([seed, i]) for i in range(3)}
    for name, data in frames.items():
        (folder / name).write_bytes(data)
    return frames


def _failed_inputs(site: Service) -> list[tuple[dict, dict[str, bytes]]]:
    """(error.json, {frame name: bytes}) for every entry in state/failed/."""
    found = []
    for folder in site.folders("failed"):
        error = json.loads((folder / "error.json").read_text())
        (kept,) = [p for p in folder.iterdir() if p.name != "error.json"]
        found.append((error, {p.name: p.read_bytes() for p in kept.iterdir()}))
    return found


def test_reserved_names_are_refused_by_classify_with_a_reason():
    """Files and folders named claim.json, error.json, duplicates (any case) are REFUSED with a
    reason that names them; a similar but different name is not."""
    folder, regular = os.lstat("/"), os.lstat(__file__)
    for name in (*RESERVED, "Duplicates", "CLAIM.JSON"):
        for info in (folder, regular):
            kind, reason = classify(name, info)
            assert kind is Kind.REFUSED
            assert f"{name!r} is a name segd uses for its own files" in reason
            assert reason.endswith("rename it")
    assert classify("duplicates2", folder)[0] is Kind.FOLDER
    assert names.reserved_name_reason("claim.json.mask.png") is None


def test_frame_folders_with_reserved_names_lose_nothing_across_a_watcher_restart(site):
    """Frame folders named claim.json, error.json and duplicates dropped into a running watcher
    end in state/failed/ whole, each with its reason; a `claim.json` frame folder that an older
    segd left half-claimed in claimed/.incoming-* is not deleted by the next watcher's crash
    recovery but filed in state/failed/ with every frame."""
    dropped = {name: _frames(site.inbox / name, seed) for seed, name in enumerate(RESERVED)}
    site.start("watch")
    site.wait_for(lambda: len(site.folders("failed")) == 3, what="3 refused frame folders")
    site.stop("watch")

    failed = _failed_inputs(site)
    assert sorted(error["name"] for error, _ in failed) == sorted(RESERVED)
    for error, frames in failed:
        assert frames == dropped[error["name"]]
        assert f"{error['name']!r} is a name segd uses for its own files" in error["reason"]
    assert list(site.inbox.iterdir()) == []

    # What the old claim left after "Is a directory": the frames inside .incoming-*/claim.json/.
    incoming = site.state / "claimed" / ".incoming-0123456789abcdef"
    left = _frames(incoming / "claim.json", seed=9)
    site.start("watch")
    site.wait_for(lambda: not incoming.exists(), what="recovery of the half-done claim")
    site.stop("watch")

    after = _failed_inputs(site)
    assert len(after) == 4
    (new,) = [(error, frames) for error, frames in after if (error, frames) not in failed]
    assert new[1] == left and new[0]["name"] == "claim.json"
    assert "is a name segd uses for its own files" in new[0]["reason"]
