"""Prometheus metrics: one exporter (`segd metrics`) reads what every worker recorded in Redis.

The counts are written by the workers themselves (`common.outcomes`, in the transaction that ends
each job); the exporter reads them at each scrape with a custom collector, together with queue
depths and what each worker publishes about itself (model version, GPU memory; see
`common.liveness`). Jobs are counted by queue and by type, the short name of their function
(`segment`, `segment_video`, `train`), so every job type is counted without code of its own.
"""

from __future__ import annotations

import logging
import signal
import threading

from redis.exceptions import RedisError

from common.config import Config
from common.errors import EXIT_OK, SegdError

log = logging.getLogger("segd.metrics")


class SegdCollector:
    """Reads segd's state from Redis (and models/current from disk) at each scrape."""

    def __init__(self, config: Config):
        from common import queues

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

        from common import queues, registry
        from common.liveness import INFO_KEY, live_workers, read_info
        from common.outcomes import BUCKETS_S, DURATION_KEY, JOBS_KEY, parse_field

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
        bad = GaugeMetricFamily(
            "segd_metrics_bad_records",
            "records in Redis this scrape skipped as unreadable (field or value not segd's "
            "format), by Redis key",
            labels=["key"],
        )
        skipped = {JOBS_KEY: 0, DURATION_KEY: 0, "rq:workers": 0, INFO_KEY: 0}
        try:
            counts = self.connection.hgetall(JOBS_KEY)
            buckets = self.connection.hgetall(DURATION_KEY)
            for name in queues.QUEUES:
                q = queues.queue(name, self.connection)
                depth.add_metric([name, "queued"], q.count)
                depth.add_metric([name, "running"], q.started_job_registry.count)
                depth.add_metric([name, "failed"], q.failed_job_registry.count)
            found, skipped["rq:workers"] = live_workers(self.connection)
            for worker in found:
                info = read_info(self.connection.get(INFO_KEY.format(name=worker.name)))
                if info is None:
                    skipped[INFO_KEY] += 1
                    info = {}
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
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        gpu.add_metric([worker.name, kind], value)
            up.add_metric([], 1)
        except (RedisError, OSError) as exc:
            log.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield from (up, current)
            return

        # Each record on its own: one that is not segd's format is skipped and counted, so a
        # stray field (or an older version's) never breaks the scrape for the others.
        for raw_field, raw_value in sorted(counts.items()):
            try:
                queue, kind, outcome = parse_field(raw_field)
                value = int(raw_value)
            except ValueError:
                skipped[JOBS_KEY] += 1
                continue
            (done if outcome == "done" else failed).add_metric([queue, kind], value)
        histograms: dict[tuple[str, str], dict[str, float]] = {}
        for raw_field, raw_value in buckets.items():
            try:
                queue, kind, le = parse_field(raw_field)
                histograms.setdefault((queue, kind), {})[le] = float(raw_value)
            except ValueError:
                skipped[DURATION_KEY] += 1
        for (queue, kind), values in sorted(histograms.items()):
            cumulative, rows = 0.0, []
            for le in [*(str(b) for b in BUCKETS_S), "+Inf"]:
                cumulative += values.get(le, 0.0)
                rows.append((le, cumulative))
            durations.add_metric([queue, kind], rows, sum_value=values.get("sum", 0.0))
        for key, count in skipped.items():
            bad.add_metric([key], count)
        yield from (up, current, done, failed, durations, depth, workers, gpu, bad)


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
