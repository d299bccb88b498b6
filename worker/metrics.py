"""Prometheus metrics: recorded in Redis by every worker, served by one exporter (`segd metrics`).

Workers on any number of hosts count their jobs in Redis, in the same transaction that marks the
job finished or failed (`record_job`, called by `queues.SegdJob`), so the counts stay right with
many workers and survive worker restarts. The exporter reads them at each scrape with a custom
collector, together with queue depths and what each worker publishes about itself (model version,
GPU memory; see `rqworker.INFO_KEY`). Jobs are counted by queue and by type, the short name of
their function (`segment`, `segment_video`, `train`), so every job type is counted without code
of its own. A job whose result says `{"status": "failed"}` (a bad input, filed in state/failed/)
counts as failed, like one that raised.

Redis keys (hashes):
    segd:metrics:jobs       "<queue>|<type>|done" / "|failed"  → count
    segd:metrics:duration   "<queue>|<type>|<bucket le>"       → count, "<queue>|<type>|sum" → seconds
    segd:metrics:last_end   "<queue>"                          → unix time the last job ended
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import datetime

from redis.exceptions import RedisError

from worker.config import Config
from worker.errors import EXIT_OK, SegdError

log = logging.getLogger("segd.metrics")
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
    queue = job.origin or "unknown"
    field = f"{queue}|{kind}"
    pipeline.hincrby(JOBS_KEY, f"{field}|{'failed' if failed else 'done'}", 1)
    started, ended = job.started_at, job.ended_at
    if isinstance(started, datetime) and isinstance(ended, datetime):
        duration_s = max((ended - started).total_seconds(), 0.0)
        bucket = next((str(b) for b in BUCKETS_S if duration_s <= b), "+Inf")
        pipeline.hincrby(DURATION_KEY, f"{field}|{bucket}", 1)
        pipeline.hincrbyfloat(DURATION_KEY, f"{field}|sum", duration_s)
    pipeline.hset(LAST_END_KEY, queue, time.time())


def result_failed(result) -> bool:
    """True for a job result that reports a failed input (`{"status": "failed", ...}`)."""
    return isinstance(result, dict) and result.get("status") == "failed"


def gpu_memory(device: str) -> dict[str, int]:
    """Allocated, reserved and total memory of a CUDA device, in bytes; {} on the CPU."""
    if not device.startswith("cuda"):
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return {
        "gpu_memory_allocated_bytes": int(torch.cuda.memory_allocated(index)),
        "gpu_memory_reserved_bytes": int(torch.cuda.memory_reserved(index)),
        "gpu_memory_total_bytes": int(torch.cuda.get_device_properties(index).total_memory),
    }


class SegdCollector:
    """Reads segd's state from Redis (and models/current from disk) at each scrape."""

    def __init__(self, config: Config):
        from worker import queues

        self.config = config
        self.connection = queues.connect(config)

    def describe(self):
        return []  # metrics come and go with queues, job types and workers

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from rq import Worker

        from worker import queues, registry
        from worker.rqworker import INFO_KEY

        up = GaugeMetricFamily("segd_redis_up", "1 when Redis answered this scrape")
        current = GaugeMetricFamily(
            "segd_model_current_info", "the model version in models/current", labels=["version"]
        )
        current.add_metric([registry.current_version(self.config.paths.models)], 1)
        done = CounterMetricFamily(
            "segd_jobs_done", "jobs that ended well, by queue and type", labels=["queue", "type"]
        )
        failed = CounterMetricFamily(
            "segd_jobs_failed",
            "jobs that failed (raised after their retries, or filed their input as failed)",
            labels=["queue", "type"],
        )
        durations = HistogramMetricFamily(
            "segd_job_duration_seconds", "job run time", labels=["queue", "type"]
        )
        depth = GaugeMetricFamily(
            "segd_queue_jobs",
            "jobs per queue and state (queued, running, failed)",
            labels=["queue", "state"],
        )
        workers = GaugeMetricFamily(
            "segd_worker_info",
            "one per live worker: host, device and the model version it runs",
            labels=["worker", "host", "device", "model", "model_version", "random_weights"],
        )
        gpu = GaugeMetricFamily(
            "segd_worker_gpu_memory_bytes",
            "GPU memory of each worker's device after its last job (allocated, reserved, total)",
            labels=["worker", "kind"],
        )
        try:
            counts = self.connection.hgetall(JOBS_KEY)
            buckets = self.connection.hgetall(DURATION_KEY)
            for name in queues.QUEUES:
                q = queues.queue(name, self.connection)
                depth.add_metric([name, "queued"], q.count)
                depth.add_metric([name, "running"], q.started_job_registry.count)
                depth.add_metric([name, "failed"], q.failed_job_registry.count)
            for worker in Worker.all(connection=self.connection):
                raw = self.connection.get(INFO_KEY.format(name=worker.name))
                info = json.loads(raw) if raw else {}
                labels = [
                    worker.name,
                    str(info.get("host", worker.hostname)),
                    str(info.get("device", "")),
                    str(info.get("model", "")),
                    str(info.get("model_version", "")),
                    str(info.get("random_weights", "")).lower(),
                ]
                workers.add_metric(labels, 1)
                for kind in ("allocated", "reserved", "total"):
                    value = info.get(f"gpu_memory_{kind}_bytes")
                    if value is not None:
                        gpu.add_metric([worker.name, kind], value)
            up.add_metric([], 1)
        except (RedisError, OSError) as exc:
            log.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield from (up, current)
            return

        for raw_field, raw_value in sorted(counts.items()):
            queue, kind, outcome = raw_field.decode().split("|")
            (done if outcome == "done" else failed).add_metric([queue, kind], int(raw_value))
        histograms: dict[tuple[str, str], dict[str, float]] = {}
        for raw_field, raw_value in buckets.items():
            queue, kind, le = raw_field.decode().split("|")
            histograms.setdefault((queue, kind), {})[le] = float(raw_value)
        for (queue, kind), values in sorted(histograms.items()):
            cumulative, rows = 0.0, []
            for le in [*(str(b) for b in BUCKETS_S), "+Inf"]:
                cumulative += values.get(le, 0.0)
                rows.append((le, cumulative))
            durations.add_metric([queue, kind], rows, sum_value=values.get("sum", 0.0))
        yield from (up, current, done, failed, durations, depth, workers, gpu)


def start(config: Config):
    """Serve the metrics on metrics.host:metrics.port in a thread; returns the HTTP server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(SegdCollector(config))
    host, port = config.metrics.host, config.metrics.port
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise SegdError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror}); "
            "change metrics.host / metrics.port"
        ) from exc
    log.info("serving metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def serve(config: Config) -> int:
    """`segd metrics`: serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = start(config)
    stop.wait()
    server.shutdown()
    return EXIT_OK
