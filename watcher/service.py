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
import signal
import threading
import time
from pathlib import Path

from redis.exceptions import RedisError
from watchdog.observers.api import BaseObserver

from common import queues, registry, state, waiting
from common.config import Config
from common.errors import EXIT_OK
from common.names import IMAGE_SUFFIXES, MASK_SUFFIX, VIDEO_SUFFIXES, image_stem, shown
from common.notify import Notifier
from watcher import claims, recovery
from watcher.beacon import Beacon
from watcher.folders import Folders, name_of, parent_of
from watcher.inbox import PART_SUFFIX, FolderKind, Kind, classify
from watcher.stems import StemIndex
from watcher.supervision import Supervised
from watcher.tracker import Tracker, frames_ready, level

log = logging.getLogger("segd.watcher")
EXIT_OBSERVER_DIED = 1
TICK_S = 0.05


class Watcher(Supervised):
    """Watches `paths.inbox`, claims complete files and enqueues their jobs (the observer and
    the systemd watchdog: watcher.supervision)."""

    def __init__(self, config: Config):
        self.config = config
        self.cfg = config.watcher
        self.inbox = Path(config.paths.inbox)
        self.state_dir = Path(config.paths.state)
        self.tracker = Tracker(self.inbox, self.cfg)
        self.seen = self.tracker.seen  # relative path -> Seen: the entries not yet acted on
        self.folders = Folders(self.inbox, Path(config.paths.outbox))
        self.stop_requested = threading.Event()
        self.observer: BaseObserver | None = None
        self.observer_restarts: list[float] = []
        self.connection = queues.connect(config)
        self.segment_queue = queues.queue(queues.SEGMENT_QUEUE, self.connection)
        self.pending_enqueue: dict[str, state.Claim] = {}
        self.notifier = Notifier.from_env()  # systemd's READY / WATCHDOG (no-op outside systemd)
        self._health_retry_at = 0.0
        self.beacon = Beacon(self.connection, self.cfg.heartbeat_ttl_s)
        self.stems = StemIndex(self.state_dir)
        self.waiting_masks: set[str] = set()  # masks said to be waiting (logged once each)
        self.twins: dict[Path, claims.Twin] = {}  # inputs waiting for their twin's job
        self.listing = recovery.Listing()  # the queues as read at each reconcile

    def rescan(self) -> None:
        """List the inbox now (on start, every `watcher.rescan_interval_s`, after an observer death)."""
        self.tracker.rescan()

    # --- deciding -----------------------------------------------------------------------
    def _refuse(self, name: str, reason: str) -> None:
        self.seen.pop(name, None)
        self.folders.forget(name)
        try:
            target = state.fail_entry(
                self.state_dir, self.inbox / name, reason, folder=parent_of(name)
            )
        except OSError as exc:
            log.error("%s: %s, and it could not be moved aside: %s", shown(name), reason, exc)
            return
        log.warning("refused %s: %s (moved to %s)", shown(name), reason, target)

    def process(self) -> list[state.Claim]:
        """Act on every complete entry; returns the claims made.

        Entries are relative paths: `x.jpg`, `visit/x.jpg`, `visit/` (see watcher.folders).
        """
        now = time.monotonic()
        made = []
        self.folders.refresh()
        stems: dict[tuple[str, str], list[str]] = {}
        for name, seen in self.seen.items():
            lower = name.lower()
            if seen.is_dir or (
                lower.endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES) and not lower.endswith(MASK_SUFFIX)
            ):
                stems.setdefault((parent_of(name), image_stem(name)), []).append(name)
        model_version = None
        for name in sorted(self.seen):
            entry = self.seen.get(name)
            if entry is None or entry.idle_until > now:
                continue
            if "/" in name and not self.folders.inside_batch(name):
                continue  # a frame of a video folder (claimed with its folder), or undecided
            info = self.tracker.complete(name, now) if not entry.is_dir else self._lstat(name)
            if info is None:
                continue
            kind, reason = classify(name_of(name), info)
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
            if kind is Kind.FOLDER:
                if level(name) > self.cfg.max_depth:
                    self._refuse(
                        name,
                        f"the folder is nested deeper than {self.cfg.max_depth} levels "
                        "(watcher.max_depth); move it up",
                    )
                    continue
                folder_kind = self.folders.kind(name)
                if folder_kind is not FolderKind.FRAMES:
                    entry.idle_until = now + self.cfg.settle_scan_s  # a batch: its files act
                    continue
                if self.tracker.complete(name, now) is None:
                    continue  # a video's frames are claimed together, once the folder settled
                if not frames_ready(self.inbox / name):
                    entry.idle_until = now + self.cfg.settle_scan_s  # a writer is inside
                    continue
            model_version = model_version or registry.current_version(self.config.paths.models)
            folder = parent_of(name)
            if kind in (Kind.IMAGE, Kind.VIDEO, Kind.FOLDER):
                mask = f"{folder}/" if folder else ""
                mask += f"{image_stem(name_of(name))}{MASK_SUFFIX}"
                mask_path = None
                if mask in self.seen:
                    mask_info = self.tracker.complete(mask, now)
                    if mask_info is None:
                        continue  # its mask is still being written: claim them together
                    if classify(name_of(mask), mask_info)[0] is Kind.MASK:
                        mask_path = self.inbox / mask
                if kind is Kind.FOLDER:
                    self.folders.forget(name)
                made += self._claim(name, mask_path, model_version, folder=folder)
            elif kind is Kind.MASK:
                stem = image_stem(name_of(name))
                if stems.get((folder, stem)):
                    continue  # its image is in the inbox: the image claims it
                previous = self.stems.latest(stem, folder)  # an index lookup, not a scan
                if previous is None:
                    entry.idle_until = now + self.cfg.rescan_interval_s
                    self._orphan_mask(name, info)
                    continue  # its image has not arrived yet
                log.info(
                    "%s arrived after its image: segmenting %s again inside the region",
                    shown(name),
                    shown(previous.name),
                )
                made += self._claim(
                    previous, self.inbox / name, model_version, reuse=True, folder=folder
                )
        return made

    def _orphan_mask(self, name: str, info: os.stat_result) -> None:
        """A mask whose image has not come: say so once; fail it after watcher.orphan_mask_s."""
        waited_s = time.time() - waiting.arrived_at(info)
        if waited_s > self.cfg.orphan_mask_s:
            self.waiting_masks.discard(name)
            self._refuse(
                name,
                f"its image never arrived: waited {waited_s:.0f} s for an image named "
                f"{image_stem(name_of(name))}.<jpg, png, ...> (watcher.orphan_mask_s = "
                f"{self.cfg.orphan_mask_s:g}); drop the image, then the mask again",
            )
        elif name not in self.waiting_masks:
            self.waiting_masks.add(name)
            log.info(
                "%s waits for its image (failed after %.0f s)", shown(name), self.cfg.orphan_mask_s
            )

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.lstat(self.inbox / name)
        except FileNotFoundError:
            self.seen.pop(name, None)
            return None

    def _claim(
        self, image, mask: Path | None, model_version: str, reuse: bool = False, folder: str = ""
    ) -> list[state.Claim]:
        image_path = image if reuse else self.inbox / image
        if not reuse:
            self.seen.pop(image, None)
        if mask is not None:
            self.seen.pop(mask.relative_to(self.inbox).as_posix(), None)
        try:
            made = claims.claim(
                self.state_dir,
                image_path,
                mask,
                model_version,
                reuse_image=reuse,
                outbox=Path(self.config.paths.outbox),
                folder=folder,
            )
        except OSError as exc:
            log.error("could not claim %s: %s", shown(image_path), exc)
            return []
        return self._settled(made)

    def _settled(self, made: state.Claim | claims.Twin | None) -> list[state.Claim]:
        """Record what claiming gave: a claim to enqueue, a twin to wait, or nothing."""
        if isinstance(made, claims.Twin):
            self.twins[made.incoming] = made
            return []
        if made is None:
            return []
        self.stems.add(made)
        log.info(
            "claimed %s%s as job %s",
            shown(f"{made.folder}/{made.image}" if made.folder else made.image),
            f" + {shown(made.mask)}" if made.mask else "",
            made.job_id,
        )
        self.pending_enqueue[made.job_id] = made
        return [made]

    def settle_twins(self) -> list[state.Claim]:
        """Claim again each twin whose holder's job has left claimed/ (see claims.Twin)."""
        made: list[state.Claim] = []
        for incoming, twin in list(self.twins.items()):
            if (self.state_dir / state.CLAIMED / twin.holder).is_dir():
                continue
            del self.twins[incoming]
            version = registry.current_version(self.config.paths.models)
            outbox = Path(self.config.paths.outbox)
            try:
                settled = claims.settle_twin(self.state_dir, twin, version, outbox)
            except OSError as exc:
                log.error(
                    "could not claim %s: %s; it stays in %s for the watcher's next start",
                    shown(twin.claim.image),
                    exc,
                    incoming,
                )
                continue
            made += self._settled(settled)
        return made

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
        self.listing.refresh()
        for entry in os.scandir(root):
            if entry.name.startswith(".") or not state.JOB_ID_PATTERN.fullmatch(entry.name):
                continue
            try:
                made = state.read_claim(Path(entry.path))
            except (OSError, ValueError, TypeError):
                continue
            if made.job_id != entry.name and recovery.finish_rekey(Path(entry.path), made) is None:
                continue
            try:
                if not recovery.needs_job(self.connection, self.config, made, self.listing):
                    continue
            except RedisError:
                return count
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
        for made in claims.recover_incoming(
            self.state_dir, model_version, Path(self.config.paths.outbox)
        ):
            self._settled(made)
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
            self.beacon.maybe_beat()
            self.tracker.drain_events()
            now = time.monotonic()
            if now - last_scan >= self.cfg.rescan_interval_s:
                self.rescan()
                last_scan = now
            self.process()
            self.settle_twins()
            self.enqueue_pending()
            if now - last_reconcile >= self.cfg.reconcile_interval_s:
                self.reconcile()
                last_reconcile = now
            self.stop_requested.wait(TICK_S)
        self.notifier.stopping()
        self.beacon.clear()
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
