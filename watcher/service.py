"""The watcher process: inbox events and rescans in, claims and enqueued jobs out.

Observer handlers only push names onto a queue (a bug there cannot kill the observer); one loop
decides. inotify events are hints: the inbox is also rescanned on start and every
`watcher.rescan_interval_s`, and `state/claimed/` is reconciled with Redis on start and every
`watcher.reconcile_interval_s`, so files dropped while the watcher was down, dropped events and
a flushed or replaced Redis lose nothing.
"""

from __future__ import annotations

import logging
import os
import queue as queue_module
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError
from rq.job import Job, JobStatus
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from watcher import claims
from watcher.inbox import PART_SUFFIX, Kind, classify
from worker import queues, registry, state
from worker.config import Config
from worker.errors import EXIT_OK
from worker.inputs import IMAGE_SUFFIXES, MASK_SUFFIX, VIDEO_SUFFIXES, image_stem
from worker.notify import Notifier

log = logging.getLogger("segd.watcher")
EXIT_OBSERVER_DIED = 1
TICK_S = 0.05


class _Handler(FileSystemEventHandler):
    """Pushes (event type, file name) for inbox entries; does nothing else."""

    def __init__(self, inbox: Path, events: queue_module.Queue):
        self.inbox = str(inbox)
        self.events = events

    def on_any_event(self, event):
        for path in (getattr(event, "dest_path", None), event.src_path):
            if path and os.path.dirname(os.fsdecode(path)) == self.inbox:
                self.events.put((event.event_type, os.path.basename(os.fsdecode(path))))


@dataclass
class _Seen:
    """The last observed state of an inbox entry and since when it has been unchanged."""

    signature: tuple[int, ...]  # (inode, size, mtime_ns); a folder: see _signature
    since: float  # monotonic time of the last change
    closed: bool  # the last event was close-after-write or rename-in: the writer is done
    idle_until: float = 0.0  # a temp file or a waiting mask: look again only after this time
    is_dir: bool = False  # a folder of frames


def _signature(path: Path, info: os.stat_result) -> tuple[int, ...]:
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


def _frames_ready(path: Path) -> bool:
    """A settled frame folder is claimed only when it holds something and no writer's temp file
    (a hidden or `.part` name) is left inside it."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return bool(names) and not any(
        n.startswith(".") or n.lower().endswith(PART_SUFFIX) for n in names
    )


class Watcher:
    """Watches `paths.inbox`, claims complete files and enqueues their jobs."""

    def __init__(self, config: Config):
        self.config = config
        self.cfg = config.watcher
        self.inbox = Path(config.paths.inbox)
        self.state_dir = Path(config.paths.state)
        self.events: queue_module.Queue = queue_module.Queue()
        self.seen: dict[str, _Seen] = {}
        self.stop_requested = threading.Event()
        self.observer = None
        self.observer_restarts: list[float] = []
        self.connection = queues.connect(config)
        self.segment_queue = queues.queue(queues.SEGMENT_QUEUE, self.connection)
        self.pending_enqueue: dict[str, state.Claim] = {}
        self.scans = 0
        self.notifier = Notifier.from_env()  # systemd's READY / WATCHDOG (no-op outside systemd)
        self._health_retry_at = 0.0

    # --- observer -------------------------------------------------------------------------
    def _start_observer(self) -> None:
        cls = PollingObserver if self.cfg.polling else Observer
        kwargs = {"timeout": self.cfg.poll_interval_s} if self.cfg.polling else {}
        self.observer = cls(**kwargs)
        self.observer.schedule(_Handler(self.inbox, self.events), str(self.inbox), recursive=False)
        self.observer.daemon = True
        self.observer.start()

    def observer_healthy(self) -> bool:
        return self.observer is not None and self.observer.is_alive()

    def _check_observer(self) -> bool:
        """Restart a dead observer (and rescan); give up after 3 deaths in a minute."""
        if self.observer_healthy():
            return True
        now = time.monotonic()
        self.observer_restarts = [t for t in self.observer_restarts if now - t < 60] + [now]
        if len(self.observer_restarts) > 3:
            log.error(
                "the inbox observer keeps dying; exiting so the service manager restarts the watcher"
            )
            return False
        log.warning("the inbox observer died; restarting it and rescanning %s", self.inbox)
        self._start_observer()
        self.rescan()
        return True

    # --- systemd ------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The observer is alive and Redis answers: what a systemd watchdog ping vouches for."""
        if not self.observer_healthy():
            return False
        try:
            return bool(self.connection.ping())
        except (RedisError, OSError):
            return False

    def heartbeat(self, now: float | None = None) -> bool:
        """Ping the systemd watchdog when a ping is due and the watcher is healthy.

        An unhealthy watcher stays silent (looked at again after a second), so systemd restarts
        it once `WatchdogSec` passes. Returns whether a ping was sent.
        """
        now = time.monotonic() if now is None else now
        if not self.notifier.watchdog_due(now) or now < self._health_retry_at:
            return False
        if not self.healthy():
            if self._health_retry_at == 0.0:
                log.warning("unhealthy (observer dead or Redis unreachable): no watchdog pings")
            self._health_retry_at = now + 1.0
            return False
        self._health_retry_at = 0.0
        return self.notifier.ping_watchdog(now)

    # --- tracking completeness ------------------------------------------------------------
    def _note(self, name: str, closed: bool, active: bool = False) -> None:
        """Record an entry's current state. The settle clock restarts when it changed, when its
        writer just closed it or renamed it in (closed), or on any write activity (active)."""
        try:
            info = os.lstat(self.inbox / name)
        except FileNotFoundError:
            self.seen.pop(name, None)
            return
        is_dir = stat.S_ISDIR(info.st_mode)
        signature = _signature(self.inbox / name, info)
        closed = closed and not is_dir  # a folder's writer is never seen closing: always settle
        previous = self.seen.get(name)
        if closed or active or previous is None or previous.signature != signature:
            self.seen[name] = _Seen(signature, time.monotonic(), closed, is_dir=is_dir)

    def drain_events(self) -> None:
        while True:
            try:
                kind, name = self.events.get_nowait()
            except queue_module.Empty:
                return
            if kind in ("closed", "moved"):
                self._note(name, closed=True)
            elif kind == "created" and not self.cfg.polling:
                # inotify: a file renamed in from another folder gives only IN_MOVED_TO, reported
                # as "created"; a writer's own file is opened right after (IN_OPEN), which marks
                # it busy below. So a creation alone is a complete arrival.
                self._note(name, closed=True)
            elif kind in ("created", "modified", "opened"):
                self._note(name, closed=False, active=True)  # being written: wait for a close
            elif kind == "deleted":
                self.seen.pop(name, None)

    def rescan(self) -> None:
        """List the inbox; notice entries no event told us about, forget vanished ones."""
        try:
            names = set(os.listdir(self.inbox))
        except FileNotFoundError:
            self.inbox.mkdir(parents=True, exist_ok=True)
            names = set()
        for name in set(self.seen) - names:
            del self.seen[name]
        for name in names:
            self._note(name, closed=False)
        self.scans += 1

    def _complete(self, name: str, now: float) -> os.stat_result | None:
        """The entry's lstat if it has been unchanged long enough to be complete, else None.

        No syscall while its settle time is still running: with thousands of files arriving, each
        is stat'ed about once per settle period, not on every tick.
        """
        entry = self.seen.get(name)
        if entry is None:
            return None
        wait = self.cfg.settle_s if entry.closed else self.cfg.settle_scan_s
        if now - entry.since < wait:
            return None
        try:
            info = os.lstat(self.inbox / name)
        except FileNotFoundError:
            self.seen.pop(name, None)
            return None
        signature = _signature(self.inbox / name, info)
        if signature != entry.signature:
            self.seen[name] = _Seen(signature, now, False, is_dir=stat.S_ISDIR(info.st_mode))
            return None
        return info

    # --- deciding -----------------------------------------------------------------------
    def _refuse(self, name: str, reason: str) -> None:
        self.seen.pop(name, None)
        try:
            target = state.fail_entry(self.state_dir, self.inbox / name, reason)
        except OSError as exc:
            log.error("%s: %s, and it could not be moved aside: %s", name, reason, exc)
            return
        log.warning("refused %s: %s (moved to %s)", name, reason, target)

    def process(self) -> list[state.Claim]:
        """Act on every complete entry; returns the claims made."""
        now = time.monotonic()
        made = []
        stems: dict[str, list[str]] = {}
        for name, seen in self.seen.items():
            lower = name.lower()
            if seen.is_dir or (
                lower.endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES) and not lower.endswith(MASK_SUFFIX)
            ):
                stems.setdefault(image_stem(name), []).append(name)
        model_version = None
        for name in sorted(self.seen):
            entry = self.seen.get(name)
            if entry is None or entry.idle_until > now:
                continue
            info = self._complete(name, now)
            if info is None:
                continue
            kind, reason = classify(name, info)
            if kind is Kind.TEMP:
                if time.time() - info.st_mtime > self.cfg.stale_part_s:
                    what = "partial upload" if name.lower().endswith(PART_SUFFIX) else "hidden file"
                    self._refuse(
                        name,
                        f"{what} left untouched for over {self.cfg.stale_part_s:.0f} s "
                        "(watcher.stale_part_s)",
                    )
                else:
                    entry.idle_until = now + self.cfg.rescan_interval_s  # wait for its rename
                continue
            if kind is Kind.REFUSED:
                self._refuse(name, reason)
                continue
            model_version = model_version or registry.current_version(self.config.paths.models)
            if kind is Kind.FRAMES and not _frames_ready(self.inbox / name):
                entry.idle_until = now + self.cfg.settle_scan_s  # empty, or a writer is inside
                continue
            if kind in (Kind.IMAGE, Kind.VIDEO, Kind.FRAMES):
                mask = f"{image_stem(name)}{MASK_SUFFIX}"
                mask_path = None
                if mask in self.seen:
                    mask_info = self._complete(mask, now)
                    if mask_info is None:
                        continue  # its mask is still being written: claim them together
                    if classify(mask, mask_info)[0] is Kind.MASK:
                        mask_path = self.inbox / mask
                made += self._claim(name, mask_path, model_version)
            elif kind is Kind.MASK:
                stem = image_stem(name)
                if stems.get(stem):
                    continue  # its image is in the inbox: the image claims it
                # Looking up an earlier image reads the claims in state/: once per rescan interval.
                previous = claims.latest_for_stem(self.state_dir, stem)
                if previous is None:
                    entry.idle_until = now + self.cfg.rescan_interval_s
                    continue  # its image has not arrived yet
                log.info(
                    "%s arrived after its image: segmenting %s again inside the region",
                    name,
                    previous.name,
                )
                made += self._claim(previous, self.inbox / name, model_version, reuse=True)
        return made

    def _claim(
        self, image, mask: Path | None, model_version: str, reuse: bool = False
    ) -> list[state.Claim]:
        image_path = image if reuse else self.inbox / image
        if not reuse:
            self.seen.pop(image, None)
        if mask is not None:
            self.seen.pop(mask.name, None)
        try:
            made = claims.claim(self.state_dir, image_path, mask, model_version, reuse_image=reuse)
        except OSError as exc:
            log.error("could not claim %s: %s", image_path, exc)
            return []
        if made is None:
            return []
        log.info(
            "claimed %s%s as job %s",
            made.image,
            f" + {made.mask}" if made.mask else "",
            made.job_id,
        )
        self.pending_enqueue[made.job_id] = made
        return [made]

    # --- queue ----------------------------------------------------------------------------
    def enqueue_pending(self) -> None:
        """Enqueue new claims; on a Redis error they wait (the claim on disk is the record)."""
        for job_id, made in list(self.pending_enqueue.items()):
            try:
                queues.enqueue_claim(self.connection, made, self.config)
            except RedisError as exc:
                log.warning(
                    "Redis unavailable (%s); %d claims wait on disk", exc, len(self.pending_enqueue)
                )
                return
            del self.pending_enqueue[job_id]

    def reconcile(self) -> int:
        """Enqueue every claim Redis does not know (lost, flushed or replaced Redis). Returns how many."""
        root = self.state_dir / state.CLAIMED
        if not root.is_dir():
            return 0
        count = 0
        for entry in os.scandir(root):
            if entry.name.startswith(".") or not state.JOB_ID_PATTERN.fullmatch(entry.name):
                continue
            try:
                made = state.read_claim(Path(entry.path))
            except (OSError, ValueError, TypeError):
                continue
            try:
                job = Job.fetch(
                    made.job_id, connection=self.connection, serializer=queues.JSONSerializer
                )
                status = job.get_status(refresh=False)
            except RedisError:
                return count
            except Exception:  # NoSuchJobError or an unreadable record
                status = None
            if status in (None, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                if status is not None:
                    job.delete()
                self.pending_enqueue[made.job_id] = made
                count += 1
        if count:
            log.info("reconciled: %d claimed jobs were not in Redis; enqueuing them again", count)
        self.enqueue_pending()
        return count

    # --- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        for folder in (self.inbox, self.state_dir / state.CLAIMED):
            folder.mkdir(parents=True, exist_ok=True)
        model_version = registry.current_version(self.config.paths.models)
        for made in claims.recover_incoming(self.state_dir, model_version):
            self.pending_enqueue[made.job_id] = made
        self._start_observer()
        self.rescan()
        self.reconcile()
        log.info("watching %s (%s)", self.inbox, "polling" if self.cfg.polling else "inotify")
        self.notifier.ready(f"watching {self.inbox}")  # after the first rescan
        last_scan = last_reconcile = time.monotonic()
        while not self.stop_requested.is_set():
            if not self._check_observer():
                return EXIT_OBSERVER_DIED
            self.heartbeat()
            self.drain_events()
            now = time.monotonic()
            if now - last_scan >= self.cfg.rescan_interval_s:
                self.rescan()
                last_scan = now
            self.process()
            self.enqueue_pending()
            if now - last_reconcile >= self.cfg.reconcile_interval_s:
                self.reconcile()
                last_reconcile = now
            self.stop_requested.wait(TICK_S)
        self.notifier.stopping()
        return EXIT_OK

    def close(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            if self.observer.is_alive():
                self.observer.join(timeout=5)


def run(config: Config) -> int:
    """`segd watch`: run the watcher until SIGTERM or SIGINT."""
    watcher = Watcher(config)

    def request_stop(signum, _frame):
        log.info("stopping (signal %d)", signum)
        watcher.stop_requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    try:
        return watcher.run()
    finally:
        watcher.close()
