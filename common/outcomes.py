"""Job outcomes counted in Redis, in the same transaction that records each job's end.

`queues.SegdJob` calls `record_job` when RQ marks a job finished or failed, so the counts stay right
with many workers on many hosts and survive worker restarts; the exporter (`segd metrics`) and the
health check read them. A job whose result says `{"status": "failed"}` (a bad input, filed in
state/failed/) counts as failed, like one that raised.

Redis keys (hashes); each field is a JSON array of strings, so a queue name holding any
character (`|` included) stays one field:
    segd:metrics:jobs       ["<queue>", "<type>", "done" | "failed"]  -> count
    segd:metrics:duration   ["<queue>", "<type>", "<bucket le>"]      -> count,
                            ["<queue>", "<type>", "sum"]              -> seconds
    segd:metrics:last_end   "<queue>"                                 -> unix time the last job ended
Fields written by older segd versions (`<queue>|<type>|<x>`) are still read (`parse_field`).
"""

from __future__ import annotations

import json
import time
from datetime import datetime

JOBS_KEY = "segd:metrics:jobs"
DURATION_KEY = "segd:metrics:duration"
LAST_END_KEY = "segd:metrics:last_end"
# Job duration buckets, seconds: a small image on a GPU .. a day-long training job.
BUCKETS_S = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


def job_type(func_name: str | None) -> str:
    """`worker.jobs.segment_video` → `segment_video`."""
    return (func_name or "unknown").rsplit(".", 1)[-1]


def record_job(pipeline, job, kind: str, failed: bool) -> None:
    """Count one ended job of type `kind` (on `pipeline`: the transaction that records its end)."""
    queue = str(job.origin or "unknown")
    pipeline.hincrby(JOBS_KEY, encode_field(queue, kind, "failed" if failed else "done"), 1)
    started, ended = job.started_at, job.ended_at
    if isinstance(started, datetime) and isinstance(ended, datetime):
        duration_s = max((ended - started).total_seconds(), 0.0)
        bucket = next((str(b) for b in BUCKETS_S if duration_s <= b), "+Inf")
        pipeline.hincrby(DURATION_KEY, encode_field(queue, kind, bucket), 1)
        pipeline.hincrbyfloat(DURATION_KEY, encode_field(queue, kind, "sum"), duration_s)
    pipeline.hset(LAST_END_KEY, queue, time.time())


def encode_field(queue: str, kind: str, last: str) -> str:
    """The hash field for (queue, type, outcome or bucket): a JSON array of three strings."""
    return json.dumps([queue, kind, last], ensure_ascii=False, separators=(",", ":"))


def parse_field(raw: bytes | str) -> tuple[str, str, str]:
    """(queue, type, last) of a hash field; ValueError for anything but three strings (a JSON
    array, or the `a|b|c` of older versions)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    if text.startswith("["):
        parts = json.loads(text)
    else:
        parts = text.split("|")
    if (
        not isinstance(parts, list)
        or len(parts) != 3
        or not all(isinstance(part, str) for part in parts)
    ):
        raise ValueError(f"not a (queue, type, value) field: {text[:80]!r}")
    return parts[0], parts[1], parts[2]


def result_failed(result) -> bool:
    """True for a job result that reports a failed input (`{"status": "failed", ...}`)."""
    return isinstance(result, dict) and result.get("status") == "failed"
