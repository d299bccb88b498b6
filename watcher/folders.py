"""Folders in the inbox: batches of inputs, or videos as frames (one rule, see
`watcher.inbox.folder_kind`), and where each entry sits.

A folder is a BATCH as soon as its listing says so (an image not named by an integer, or a
subfolder); from then on it stays one for this watcher (and after a restart, when the outbox
already holds its mirrored folder of results), so files added later are never mistaken for a
video. A folder of frames is claimed whole once it settled; the files of a batch are claimed one
by one, each once it is complete.
"""

from __future__ import annotations

from pathlib import Path

from watcher.inbox import FolderKind, folder_kind


def parent_of(rel: str) -> str:
    """The relative folder of an entry ('' = the inbox itself)."""
    return rel.rpartition("/")[0]


def name_of(rel: str) -> str:
    return rel.rpartition("/")[2]


class Folders:
    """What each folder of the inbox is; `refresh()` once per pass drops the per-pass answers."""

    def __init__(self, inbox: Path, outbox: Path):
        self.inbox = inbox
        self.outbox = outbox
        self.batches: set[str] = set()  # relative folders known to be batches
        self._pass: dict[str, FolderKind] = {}

    def refresh(self) -> None:
        self._pass.clear()

    def kind(self, rel: str) -> FolderKind:
        """BATCH, FRAMES or UNDECIDED for the inbox folder `rel` ('' is always a batch)."""
        if rel == "" or rel in self.batches:
            return FolderKind.BATCH
        if rel in self._pass:
            return self._pass[rel]
        kind = folder_kind(self.inbox / rel)
        if kind is not FolderKind.BATCH and self._has_results_folder(rel):
            kind = FolderKind.BATCH  # results of its inputs are published: a batch before a restart
        if kind is FolderKind.BATCH:
            self.batches.add(rel)
        self._pass[rel] = kind
        return kind

    def _has_results_folder(self, rel: str) -> bool:
        mirrored = self.outbox / rel
        return mirrored.is_dir() and not (mirrored / "manifest.json").exists()

    def inside_batch(self, rel: str) -> bool:
        """True when every folder above entry `rel` is a batch (its files are inputs of their own,
        not frames of a video)."""
        parent = parent_of(rel)
        while True:
            if self.kind(parent) is not FolderKind.BATCH:
                return False
            if parent == "":
                return True
            parent = parent_of(parent)

    def forget(self, rel: str) -> None:
        """A folder left the inbox (claimed as a video, refused, or removed)."""
        self.batches.discard(rel)
        self._pass.pop(rel, None)
