"""segd.metrics: counts recorded by every worker in Redis, served by `segd metrics`, match the
jobs a test ran through two real workers."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common import outcomes, queues
from common.errors import SegdError
from segd import metrics
from tests.service_helpers import Service, picture


@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    site = Service(tmp_path / "site", checkpoint=tiny_checkpoint, SEGD_METRICS__PORT="0")
    site.start_redis()
    yield site
    site.close()


def _scrape(service: Service) -> dict[str, list]:
    """Start `segd metrics` on a free port, fetch /metrics once, stop it; family name → samples."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "segd", "metrics"],
        env=service.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in proc.stderr:
            match = re.search(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
            if match:
                break
        else:
            raise AssertionError(f"segd metrics exited with {proc.wait()}")
        text = urllib.request.urlopen(match.group(1), timeout=30).read().decode()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _value(samples, name: str, **labels) -> float:
    (value,) = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return value


def test_counts_durations_and_queues_match_the_jobs_two_workers_ran(service, data_dir):
    """Three good images, one bad input and one job that raises, spread over two workers: the
    exporter reports 3 done and 2 failed segment jobs, 5 durations, empty queues, both workers
    with their model version, and the current model."""
    service.start("worker", "--name", "w1")
    service.procs["worker-2"] = service.procs.pop("worker")
    service.start("worker", "--name", "w2")
    service.start("watch")
    for i in range(3):
        (service.inbox / f"ok{i}.jpg").write_bytes(picture(200 + i))
    truck = (data_dir / "truck.jpg").read_bytes()
    (service.inbox / "truncated.jpg").write_bytes(truck[: len(truck) // 2])
    connection = service.redis_client()
    queues.queue(queues.SEGMENT_QUEUE, connection).enqueue(
        queues.SEGMENT_JOB, kwargs={"job_id": "nosuchclaim", "image": "x.jpg"}, job_timeout=60
    )
    service.wait_for(
        lambda: len(service.folders("done")) == 3 and len(service.folders("failed")) == 1,
        what="3 done and 1 failed input",
    )
    service.wait_for(
        lambda: connection.zcard("rq:failed:segment") == 1, what="the raising job to fail"
    )
    families = _scrape(service)

    assert _value(families["segd_redis_up"], "segd_redis_up") == 1
    done, failed = families["segd_jobs_done"], families["segd_jobs_failed"]
    assert _value(done, "segd_jobs_done_total", queue="segment", type="segment") == 3
    assert _value(failed, "segd_jobs_failed_total", queue="segment", type="segment") == 2
    durations = families["segd_job_duration_seconds"]
    assert _value(durations, "segd_job_duration_seconds_count", queue="segment") == 5
    assert _value(durations, "segd_job_duration_seconds_sum", queue="segment") > 0
    assert _value(durations, "segd_job_duration_seconds_bucket", queue="segment", le="+Inf") == 5
    depth = families["segd_queue_jobs"]
    assert _value(depth, "segd_queue_jobs", queue="segment", state="queued") == 0
    assert _value(depth, "segd_queue_jobs", queue="segment", state="failed") == 1
    assert {s.labels["queue"] for s in depth} == set(queues.QUEUES)
    workers = families["segd_worker_info"]
    assert {s.labels["worker"] for s in workers} == {"w1", "w2"}
    assert {s.labels["model_version"] for s in workers} == {"base"}
    assert families["segd_worker_gpu_memory_bytes"] == []  # CPU workers have no GPU memory
    assert _value(families["segd_model_current_info"], "segd_model_current_info") == 1
    service.stop("worker-2")


def test_with_redis_down_the_exporter_still_answers_and_says_so(service):
    """Redis unreachable: /metrics still answers, with segd_redis_up 0."""
    service.kill_redis()
    families = _scrape(service)
    assert _value(families["segd_redis_up"], "segd_redis_up") == 0


def test_a_taken_port_is_an_error_naming_the_address_and_the_keys(service):
    """A second exporter on the same port fails with host:port and the keys to change."""
    from common.config import load_config

    config = load_config(None, service.env)
    server = metrics.start(config)
    try:
        taken = config.model_copy(
            update={"metrics": config.metrics.model_copy(update={"port": server.server_port})}
        )
        with pytest.raises(
            SegdError, match=rf"127\.0\.0\.1:{server.server_port} .*metrics\.host / metrics\.port"
        ):
            metrics.start(taken)
    finally:
        server.shutdown()


def test_job_types_are_the_short_names_of_their_functions():
    """Any job function is counted under its short name: no per-type code."""
    assert outcomes.job_type("worker.jobs.segment_video") == "segment_video"
    assert outcomes.job_type("worker.jobs.train") == "train"
    assert outcomes.result_failed({"status": "failed", "reason": "x"})
    assert not outcomes.result_failed({"status": "done"}) and not outcomes.result_failed(None)


@pytest.mark.gpu
def test_gpu_memory_is_reported_for_a_cuda_device():
    """On a CUDA device the allocated, reserved and total bytes are real numbers."""
    import torch

    from worker.models.devices import gpu_memory

    block = torch.ones(1024, 1024, device="cuda")
    memory = gpu_memory("cuda:0")
    assert memory["gpu_memory_allocated_bytes"] >= block.numel() * 4
    assert memory["gpu_memory_total_bytes"] > memory["gpu_memory_reserved_bytes"] > 0
    assert gpu_memory("cpu") == {}


def test_odd_records_are_skipped_and_counted_and_never_break_a_scrape(service):
    """A job origin with `|`, an older `a|b|c` field, junk fields and values, a non-JSON
    segd:worker record and a worker hash with an unexpected date: collect() still yields every
    good count, skips each bad record and counts it in segd_metrics_bad_records."""
    from datetime import UTC, datetime, timedelta

    from rq import Worker
    from rq.job import Job

    from common.config import load_config
    from common.liveness import INFO_KEY

    connection = service.redis_client()
    job = Job.create("worker.jobs.segment", connection=connection, origin="in|box")
    job.started_at = datetime.now(UTC)
    job.ended_at = job.started_at + timedelta(seconds=3)
    with connection.pipeline() as pipeline:
        outcomes.record_job(pipeline, job, "segment", failed=False)
        pipeline.execute()
    connection.hset(outcomes.JOBS_KEY, "segment|segment|failed", 4)  # an older segd's field
    connection.hset(outcomes.JOBS_KEY, "a|b", 1)  # two parts
    connection.hset(outcomes.JOBS_KEY, '["x", 1, "done"]', 1)  # not three strings
    connection.hset(outcomes.JOBS_KEY, outcomes.encode_field("q", "t", "done"), "many")
    connection.hset(outcomes.DURATION_KEY, "[not json", 1)
    good = Worker(["segment"], name="good", connection=connection)
    good.register_birth()
    connection.set(INFO_KEY.format(name="good"), b"{not json")
    connection.hset("rq:worker:odd", mapping={"birth": "yesterday", "last_heartbeat": "soon"})
    connection.sadd("rq:workers", "rq:worker:odd")

    collector = metrics.SegdCollector(load_config(None, service.env))
    families = {family.name: family.samples for family in collector.collect()}

    assert _value(families["segd_redis_up"], "segd_redis_up") == 1
    done, failed = families["segd_jobs_done"], families["segd_jobs_failed"]
    assert _value(done, "segd_jobs_done_total", queue="in|box", type="segment") == 1
    assert _value(failed, "segd_jobs_failed_total", queue="segment", type="segment") == 4
    durations = families["segd_job_duration_seconds"]
    assert _value(durations, "segd_job_duration_seconds_sum", queue="in|box") == 3
    assert {s.labels["worker"] for s in families["segd_worker_info"]} == {"good"}
    bad = families["segd_metrics_bad_records"]
    assert _value(bad, "segd_metrics_bad_records", key=outcomes.JOBS_KEY) == 3
    assert _value(bad, "segd_metrics_bad_records", key=outcomes.DURATION_KEY) == 1
    assert _value(bad, "segd_metrics_bad_records", key="rq:workers") == 1
    assert _value(bad, "segd_metrics_bad_records", key=INFO_KEY) == 1
