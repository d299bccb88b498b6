"""When an inbox entry is complete: events and rescans note each entry's state, and an entry is
complete once it has been unchanged for its settle time.

inotify events are hints (a creation, a close after writing, a rename in); the inbox is also
listed on start and every `watcher.rescan_interval_s`, so nothing depends on an event arriving.

With inotify, a file some process opened (IN_OPEN) or wrote (IN_MODIFY) is busy until every opener
has closed it (IN_CLOSE_WRITE / IN_CLOSE_NOWRITE): a writer that stalls with the file open (a
network copy, a download) is waited for, however long it pauses, up to
`watcher.open_writer_timeout_s` without any change (a writer that died with the file open). A
polling observer sees no opens or closes: there a file is complete once unchanged for
`watcher.settle_scan_s` (see docs/reliability.md).

Entries are keyed by their path relative to the inbox ('/'-separated): the watch and the rescans
cover subfolders down to `watcher.max_depth` levels (and note the folders one level deeper, so
the watcher can refuse them).
"""

from __future__ import annotations

import os
import queue as queue_module
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEventHandler

from common.config import WatcherConfig
from watcher.inbox import PART_SUFFIX

DIR_PREFIX = "dir_"  # event types of folders: "dir_modified" (a file moved in), ...


def relative(inbox: str, path: str) -> str | None:
    """`path` relative to `inbox` ('/'-separated), or None when it is not inside it."""
    if not path.startswith(inbox + os.sep):
        return None
    return path[len(inbox) + 1 :].replace(os.sep, "/") or None


def level(rel: str) -> int:
    """How deep an entry sits: 1 for `x.jpg` or `visit/`, 2 for `visit/x.jpg`, ..."""
    return rel.count("/") + 1


class Handler(FileSystemEventHandler):
    """Pushes (event type, relative path) for inbox entries; does nothing else."""

    def __init__(self, inbox: Path, events: queue_module.Queue, max_depth: int = 0):
        self.inbox = str(inbox)
        self.events = events
        self.max_depth = max_depth

    def on_any_event(self, event):
        kind = event.event_type
        if event.is_directory:  # a folder is never "open for writing": no opener counting
            kind = DIR_PREFIX + kind
        for path in (getattr(event, "dest_path", None), event.src_path):
            rel = relative(self.inbox, os.fsdecode(path)) if path else None
            if rel is not None and level(rel) <= self.max_depth + 1:
                self.events.put((kind, rel))


@dataclass
class Seen:
    """The last observed state of an inbox entry and since when it has been unchanged."""

    signature: tuple[int, ...]  # (inode, size, mtime_ns); a folder: see entry_signature
    since: float  # monotonic time of the last change
    closed: bool  # the last event was close-after-write or rename-in: the writer is done
    idle_until: float = 0.0  # a temp file or a waiting mask: look again only after this time
    is_dir: bool = False  # a folder of frames


def entry_signature(path: Path, info: os.stat_result) -> tuple[int, ...]:
    """What must stay unchanged for an entry to be complete: a file's (inode, size, mtime_ns); a
    folder's inode plus its entries' count, total size and newest mtime (a folder's own mtime
    does not change while a file inside it grows, and inotify reports nothing from inside it)."""
    if not stat.S_ISDIR(info.st_mode):
        return (info.st_ino, info.st_size, info.st_mtime_ns)
    count = total = newest = 0
    try:
        for entry in os.scandir(path):
            entry_info = entry.stat(follow_symlinks=False)
            count, total = count + 1, total + entry_info.st_size
            newest = max(newest, entry_info.st_mtime_ns)
    except OSError:
        return (info.st_ino, -1, 0, 0)
    return (info.st_ino, count, total, newest)


def frames_ready(path: Path) -> bool:
    """A settled frame folder is claimed only when it holds something and no writer's temp file
    (a hidden or `.part` name) is left inside it."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return bool(names) and not any(
        n.startswith(".") or n.lower().endswith(PART_SUFFIX) for n in names
    )


class Tracker:
    """The last seen state of every inbox entry (`seen`: name -> Seen), fed by observer events
    (`events`: (event type, name)) and rescans."""

    def __init__(self, inbox: Path, cfg: WatcherConfig):
        self.inbox = inbox
        self.cfg = cfg
        self.events: queue_module.Queue = queue_module.Queue()
        self.seen: dict[str, Seen] = {}
        self.scans = 0
        self.openers: dict[str, int] = {}  # inotify: opens not yet matched by a close
        self.written: set[str] = set()  # inotify: modified and not closed after writing since

    def busy(self, name: str) -> bool:
        """True while inotify says a process holds the file open, or wrote it and has not closed
        it yet (never with polling, which sees no opens or closes)."""
        return self.openers.get(name, 0) > 0 or name in self.written

    def _forget(self, name: str) -> None:
        self.seen.pop(name, None)
        self.openers.pop(name, None)
        self.written.discard(name)

    def note(self, name: str, closed: bool, active: bool = False) -> None:
        """Record an entry's current state. The settle clock restarts when it changed, when its
        writer just closed it or renamed it in (closed), or on any write activity (active)."""
        try:
            info = os.lstat(self.inbox / name)
        except FileNotFoundError:
            self._forget(name)
            return
        is_dir = stat.S_ISDIR(info.st_mode)
        signature = entry_signature(self.inbox / name, info)
        closed = closed and not is_dir  # a folder's writer is never seen closing: always settle
        previous = self.seen.get(name)
        if closed or active or previous is None or previous.signature != signature:
            self.seen[name] = Seen(signature, time.monotonic(), closed, is_dir=is_dir)

    def drain_events(self) -> None:
        while True:
            try:
                kind, name = self.events.get_nowait()
            except queue_module.Empty:
                return
            if kind.startswith(DIR_PREFIX):
                kind = kind.removeprefix(DIR_PREFIX)  # a folder: settles, never busy
            elif not self.cfg.polling:
                self._count_opener(kind, name)
            if kind in ("closed", "moved"):
                self.note(name, closed=True)
            elif kind == "created" and not self.cfg.polling:
                # inotify: a file renamed in from another folder gives only IN_MOVED_TO, reported
                # as "created"; a writer's own file is opened right after (IN_OPEN), which marks
                # it busy below. So a creation alone is a complete arrival.
                self.note(name, closed=True)
            elif kind in ("created", "modified", "opened"):
                self.note(name, closed=False, active=True)  # being written: wait for a close
            elif kind == "closed_no_write":
                self.note(name, closed=False)
            elif kind == "deleted":
                self._forget(name)

    def _count_opener(self, kind: str, name: str) -> None:
        """Keep the inotify open/close balance of a name (see the module docstring)."""
        if kind == "opened":
            self.openers[name] = self.openers.get(name, 0) + 1
        elif kind == "modified":
            self.written.add(name)
        elif kind in ("closed", "closed_no_write"):
            left = self.openers.get(name, 0) - 1
            if left > 0:
                self.openers[name] = left
            else:
                self.openers.pop(name, None)
            if kind == "closed":
                self.written.discard(name)
        elif kind == "moved":  # renamed in complete (or away): no opener of this name counts
            self.openers.pop(name, None)
            self.written.discard(name)

    def _walk(self, rel: str, names: set[str]) -> None:
        """Add the entries of folder `rel` ('' = the inbox) and of its subfolders to `names`."""
        try:
            entries = list(os.scandir(self.inbox / rel if rel else self.inbox))
        except OSError:
            return
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            names.add(child)
            if (
                entry.is_dir(follow_symlinks=False)
                and not entry.name.startswith(".")
                and level(child) <= self.cfg.max_depth
            ):
                self._walk(child, names)

    def rescan(self) -> None:
        """List the inbox and its subfolders; notice entries no event told us about, forget
        vanished ones."""
        if not self.inbox.is_dir():
            self.inbox.mkdir(parents=True, exist_ok=True)
        names: set[str] = set()
        self._walk("", names)
        for name in set(self.seen) - names:
            self._forget(name)
        for name in names:
            self.note(name, closed=False)
        self.scans += 1

    def complete(self, name: str, now: float) -> os.stat_result | None:
        """The entry's lstat if it has been unchanged long enough to be complete, else None.

        No syscall while its settle time is still running: with thousands of files arriving, each
        is stat'ed about once per settle period, not on every tick.
        """
        entry = self.seen.get(name)
        if entry is None:
            return None
        wait = self.cfg.settle_s if entry.closed else self.cfg.settle_scan_s
        if self.busy(name):
            wait = self.cfg.open_writer_timeout_s  # its writer has it open: wait for the close
        if now - entry.since < wait:
            return None
        try:
            info = os.lstat(self.inbox / name)
        except FileNotFoundError:
            self._forget(name)
            return None
        signature = entry_signature(self.inbox / name, info)
        if signature != entry.signature:
            self.seen[name] = Seen(signature, now, False, is_dir=stat.S_ISDIR(info.st_mode))
            return None
        return info
