"""The watcher's stem index: for each (inbox folder, stem), the newest claim in state/claimed/ or state/done/,
so a mask arriving after its image finds that image without reading every claim.json.

Built from the claim files once (on the first lookup), then kept up to date by the watcher's own
claims. A claim that has moved since (a worker re-keyed it to the model version that ran, or it
failed) is looked up again by one rebuild, after which the index holds where it went or
forgets it: a mask waiting for an image costs a dictionary lookup per rescan, not a full scan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from common import state


@dataclass(frozen=True)
class Entry:
    seq: int
    job_id: str
    image: str
    within: str = ""  # where in the job folder: '' or `duplicates/<token>` (a re-run's claim)


class StemIndex:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.entries: dict[tuple[str, str], Entry] = {}  # (folder, stem) -> newest claim
        self.builds = 0  # full scans of claimed/ and done/ so far

    def build(self) -> None:
        """Read every claim in claimed/ and done/ (once at start, and after a claim moved)."""
        entries: dict[tuple[str, str], Entry] = {}
        for kind in (state.CLAIMED, state.DONE):
            root = self.state_dir / kind
            if not root.is_dir():
                continue
            for item in os.scandir(root):
                if item.name.startswith("."):
                    continue
                for within in ["", *_duplicates(Path(item.path))]:
                    found = _entry(Path(item.path), item.name, within)
                    if found is not None:
                        key, entry = found
                        if key not in entries or entry.seq > entries[key].seq:
                            entries[key] = entry
        self.entries = entries
        self.builds += 1

    def add(self, claim: state.Claim) -> None:
        """Record a claim the watcher just made."""
        key = (claim.folder, claim.stem)
        old = self.entries.get(key)
        if old is None or claim.seq >= old.seq:
            self.entries[key] = Entry(claim.seq, claim.job_id, claim.image)

    def _find(self, key: tuple[str, str]) -> Path | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        for kind in (state.CLAIMED, state.DONE):
            path = self.state_dir / kind / entry.job_id / entry.within / entry.image
            if os.path.lexists(path):
                return path
        return None

    def latest(self, stem: str, folder: str = "") -> Path | None:
        """The image (or video) of the newest claimed or done job for `stem` from inbox folder
        `folder` ('' = the inbox itself), or None."""
        if not self.builds:
            self.build()
        key = (folder, stem)
        found = self._find(key)
        if found is None and key in self.entries:  # it moved since: look once more
            self.build()
            found = self._find(key)
            if found is None:
                self.entries.pop(key, None)
        return found


def _duplicates(job_dir: Path) -> list[str]:
    """`duplicates/<token>` of each copy kept in a job folder: another claim of the same bytes
    (a copy for another folder or name that was segmented again, or a plain duplicate)."""
    try:
        return [
            f"{state.DUPLICATES}/{e.name}"
            for e in os.scandir(job_dir / state.DUPLICATES)
            if e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return []


def _entry(job_dir: Path, job_id: str, within: str) -> tuple[tuple[str, str], Entry] | None:
    """((folder, stem), Entry) of the claim.json in `job_dir/within`; None when unreadable."""
    try:
        info = json.loads((job_dir / within / state.CLAIM_FILE).read_text())
        entry = Entry(int(info["seq"]), job_id, str(info["image"]), within)
        return (str(info.get("folder") or ""), str(info["stem"])), entry
    except (OSError, ValueError, KeyError, TypeError):
        return None
