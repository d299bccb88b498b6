"""Region masks waiting in the inbox for their image: what `segd status` shows, what
`segd status --check` warns about and what the watcher moves to state/failed/ after
`watcher.orphan_mask_s`.

A mask's wait starts when it arrived: the later of its mtime and its ctime (a rename into the
inbox changes the ctime, so an old file moved in starts waiting when it was moved). Standard
library only.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.names import MASK_SUFFIX, image_stem


def arrived_at(info: os.stat_result) -> float:
    """When an inbox entry arrived (unix time): the later of its mtime and ctime."""
    return max(info.st_mtime, info.st_ctime)


def waiting_masks(inbox: Path, now: float) -> list[dict]:
    """Masks in `inbox` with no entry of the same stem beside them: [{"name", "waited_s"}],
    longest waiting first."""
    try:
        names = [n for n in os.listdir(inbox) if not n.startswith(".")]
    except FileNotFoundError:
        return []
    masks = [n for n in names if n.lower().endswith(MASK_SUFFIX)]
    others = {image_stem(n) for n in names if not n.lower().endswith(MASK_SUFFIX)}
    found = []
    for name in masks:
        if image_stem(name) in others:
            continue
        try:
            info = os.lstat(inbox / name)
        except FileNotFoundError:
            continue
        found.append({"name": name, "waited_s": round(max(now - arrived_at(info), 0.0), 1)})
    return sorted(found, key=lambda m: -m["waited_s"])
