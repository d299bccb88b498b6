"""Config sections of the service around the model: folders, Redis, watcher, workers, metrics, health, web page."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from common.config.base import Section


class PathsConfig(Section):
    inbox: Path = Field(
        default=Path("inbox"),
        description="Where files are dropped; relative paths are relative to the config file's folder.",
    )
    outbox: Path = Field(
        default=Path("outbox"), description="Where results are published, one folder per input."
    )
    state: Path = Field(
        default=Path("state"),
        description="segd's own bookkeeping: claimed/, done/, failed/ and the private Redis.",
    )
    models: Path = Field(
        default=Path("models"),
        description="Model versions: base/ (the official checkpoint), fine-tuned versions, current.",
    )


class RedisConfig(Section):
    url: str | None = Field(
        default=None,
        description="null: `segd up` starts a private redis-server on a unix socket under paths.state. Otherwise redis://[:password@]host:port/db, rediss://... (TLS) or unix:///path/redis.sock.",
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^(redis|rediss|unix)://", url):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url


class WatcherConfig(Section):
    polling: bool = Field(
        default=False,
        description="Polling instead of inotify: needed on network file systems (inotify misses remote writes).",
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two polls of the inbox (watcher.polling only).",
    )
    settle_s: float = Field(
        default=0.2,
        ge=0,
        description="Seconds a file must stay unchanged after its writer closed it or renamed it in to count as complete.",
    )
    settle_scan_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds a file must stay unchanged to count as complete when no close or rename was seen (polling, rescans).",
    )
    rescan_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between two full rescans of the inbox (events can be dropped).",
    )
    reconcile_interval_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between two reconciliations of state/claimed/ with Redis.",
    )
    stale_part_s: float = Field(
        default=86400.0,
        gt=0,
        description="A `.part` file untouched this long is moved to state/failed/ as abandoned.",
    )
    open_writer_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        description="With inotify, a file opened for writing is busy until its writer closes it; after this many seconds without any change it is taken anyway (a writer that died with the file open).",
    )
    orphan_mask_s: float = Field(
        default=3600.0,
        gt=0,
        description="A region mask whose image has not arrived (nor been segmented before) this many seconds after the mask came is moved to state/failed/ with a reason.",
    )
    heartbeat_ttl_s: float = Field(
        default=30.0,
        ge=1,
        description="The watcher's heartbeat in Redis (`segd:watcher:<host>:<pid>`) expires after this many seconds unless its loop refreshes it; `segd status --check` reports a watcher without one.",
    )
    max_depth: int = Field(
        default=8,
        ge=1,
        le=64,
        description="How many folder levels below the inbox are read: a folder dropped into the inbox is level 1, a folder inside it level 2, ... A folder deeper than this is moved to state/failed/ with the reason.",
    )


class WorkerConfig(Section):
    prefetch: bool = Field(
        default=True,
        description="Overlap: while a result is written, the next queued image goes through the model in a thread and the one after it is read, decoded and preprocessed in another (docs/benchmarks.md). A worker that dies during either counts the death against that input too (common.attempts), so an input that kills the worker still ends in state/failed/ after worker.retries deaths. false: one image at a time.",
    )
    job_timeout_s: int = Field(
        default=900,
        ge=10,
        description="RQ job timeout of an image job: above the slowest image on the slowest worker. A stop waits for the larger of this and video.job_timeout_s (+ a margin) for the running job to finish.",
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries after an unexpected error (bad inputs are never retried; transient trouble has its own horizon, worker.transient_retry_s); also how many times a worker may die (killed, out of memory) on one input before it is moved to state/failed/: it is started at most retries + 1 times.",
    )
    heartbeat_ttl_s: float = Field(
        default=60.0,
        ge=1,
        description="Each worker refreshes a heartbeat key in Redis every quarter of this, during jobs too; a worker whose heartbeat expired is dead: its name may be taken, its job is re-enqueued by the watcher and `segd status --check` stops counting it.",
    )
    transient_retry_s: int = Field(
        default=3600,
        ge=0,
        description="How long a job that fails for a transient reason (no space left, I/O error, GPU out of memory, Redis lost) keeps being retried, with back-off, before its input goes to state/failed/ (where `segd retry` can send it again). 0: no transient retries.",
    )
    transient_backoff_max_s: int = Field(
        default=60,
        ge=1,
        description="The longest wait between two transient retries: waits start at 2 s and double up to this.",
    )
    min_free_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="A worker takes no job while the file system of paths.outbox or paths.state has less free space than this (bytes); it resumes by itself once space is freed, and `segd status --check` reports it. 0: no floor.",
    )


class MetricsConfig(Section):
    host: str = Field(
        default="127.0.0.1",
        description="The Prometheus exporter (`segd metrics`, and `segd up`): localhost only unless changed.",
    )
    port: int = Field(default=9470, ge=0, le=65535, description="Port of the Prometheus exporter.")


class HealthConfig(Section):
    expected_workers: int = Field(
        default=1,
        ge=0,
        description="`segd status --check`: fewer live workers on the segment queue than this is a problem.",
    )
    expected_watchers: int = Field(
        default=1,
        ge=0,
        description="`segd status --check`: fewer watchers with a live heartbeat in Redis than this is a problem.",
    )
    stuck_after_s: float = Field(
        default=1800.0,
        ge=0,
        description="`segd status --check`: a queue whose oldest job waited this long, while no job of it ended in as long and none is running within its timeout, is stuck.",
    )


class WebConfig(Section):
    host: str = Field(
        default="127.0.0.1",
        description="The web page (`segd web`, and `segd up`): localhost only unless changed. Any other address needs web.token.",
    )
    port: int = Field(default=9471, ge=0, le=65535, description="Port of the web page.")
    token: str | None = Field(
        default=None,
        description="The password of the web page (HTTP Basic, any user name; or `Authorization: Bearer`). Required, at least 16 characters, when web.host is not a loopback address; best kept in the secrets file (SEGD_WEB__TOKEN=... in segd.env) rather than in the config file.",
    )
    max_upload_bytes: int = Field(
        default=512 * 2**20,
        ge=1,
        description="Files dropped onto the page larger than this are refused (the inbox's own limits apply as well).",
    )
    thumbnail_px: int = Field(
        default=320,
        ge=32,
        le=2048,
        description="Longest side of the result thumbnails, cached under paths.state/web/thumbs/ (made once by the web process, never by the workers).",
    )
    refresh_s: float = Field(
        default=3.0,
        gt=0,
        description="Seconds between two refreshes of the live parts of the page.",
    )
