"""segd.health (`segd status --check`): non-zero with a reason when Redis is unreachable, a
worker is missing or a queue is stuck; zero when healthy. Real redis-server and real workers."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from common import queues
from common.outcomes import LAST_END_KEY
from segd import health
from tests.service_helpers import Service


@pytest.fixture
def site(tmp_path, tiny_checkpoint):
    service = Service(tmp_path / "site", checkpoint=tiny_checkpoint)
    yield service
    service.close()


def _check(service: Service, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "segd", "status", "--check"],
        # The watcher's heartbeat is tested in tests/e2e/test_reliability.py.
        env={**service.env, "SEGD_HEALTH__EXPECTED_WATCHERS": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _enqueue(service: Service, queue_name: str, func: str = queues.SEGMENT_JOB) -> None:
    queues.queue(queue_name, service.redis_client()).enqueue(
        func, kwargs={"job_id": "nosuchclaim", "image": "x.jpg"}, job_timeout=60
    )


def test_unreachable_redis_is_critical_and_names_the_url_without_its_password(site):
    """No Redis: exit 1, one line naming the Redis; a password in the URL is not printed."""
    code, output = _check(site)
    assert code == 1
    assert output.startswith(f"CRITICAL Redis unix://{site.socket} is unreachable")
    code, output = _check(site, SEGD_REDIS__URL="redis://:s3cret@127.0.0.1:1/0")
    assert code == 1 and "redis://:***@127.0.0.1:1/0 is unreachable" in output
    assert "s3cret" not in output


def test_a_missing_worker_is_critical_and_a_running_one_is_healthy(site):
    """No worker: exit 1 naming the queue and the expected count; one worker: exit 0; expecting
    two with one running: exit 1 again."""
    site.start_redis()
    code, output = _check(site)
    assert code == 1
    assert "CRITICAL worker missing: 0 live on queue segment, expected 1" in output
    site.start("worker")
    site.wait_for(
        lambda: site.redis_client().scard("rq:workers:segment") == 1, what="the worker to register"
    )
    code, output = _check(site)
    assert (code, output.split(" at ")[0]) == (0, "OK segd healthy"), output
    code, output = _check(site, SEGD_HEALTH__EXPECTED_WORKERS="2")
    assert code == 1 and "1 live on queue segment, expected 2" in output


def test_a_queue_nobody_serves_is_stuck_until_a_worker_takes_its_job(site):
    """A job queued longer than health.stuck_after_s with nothing running or ending: exit 1
    naming the queue; once a worker has taken it (and the queue is empty): exit 0."""
    site.start_redis()
    strict = {"SEGD_HEALTH__STUCK_AFTER_S": "0"}
    assert _check(site, **strict)[0] == 1  # (the worker is missing, too)
    _enqueue(site, queues.SEGMENT_QUEUE)
    code, output = _check(site, SEGD_HEALTH__EXPECTED_WORKERS="0", **strict)
    assert code == 1
    assert "CRITICAL queue segment is stuck: 1 jobs queued" in output
    assert "no job of it has ended yet (health.stuck_after_s = 0)" in output
    assert _check(site, SEGD_HEALTH__EXPECTED_WORKERS="0")[0] == 0  # default: 30 min to go
    site.start("worker")
    site.wait_for(lambda: site.redis_client().zcard("rq:failed:segment") == 1, what="the job")
    code, output = _check(site, **strict)
    assert code == 0, output


def test_a_backlog_is_not_stuck_while_jobs_end_or_run(site):
    """Queued jobs older than the threshold are fine while a job ended recently or one runs
    within its deadline; stuck otherwise."""
    site.start_redis()
    connection = site.redis_client()
    _enqueue(site, queues.SEGMENT_QUEUE)
    later = time.time() + 600  # judge the queue 10 minutes from now, with a 60 s threshold
    assert "stuck" in health.stuck(connection, queues.SEGMENT_QUEUE, 60, later)
    connection.hset(LAST_END_KEY, queues.SEGMENT_QUEUE, later - 30)
    assert health.stuck(connection, queues.SEGMENT_QUEUE, 60, later) is None
    connection.hset(LAST_END_KEY, queues.SEGMENT_QUEUE, later - 90)
    reason = health.stuck(connection, queues.SEGMENT_QUEUE, 60, later)
    assert "the last job ended 90 s ago" in reason
    started = queues.queue(queues.SEGMENT_QUEUE, connection).started_job_registry.key
    connection.zadd(started, {"running-job:exec": later + 300})  # deadline still ahead
    assert health.stuck(connection, queues.SEGMENT_QUEUE, 60, later) is None
    assert health.stuck(connection, queues.VIDEO_QUEUE, 60, later) is None  # empty queue


def test_the_shipped_config_has_the_default_health_and_metrics_settings():
    """config.yaml's health: and metrics: sections equal the defaults: localhost, one worker."""
    from common.config import load_config
    from tests.conftest import ROOT

    shipped = load_config(ROOT / "config.yaml", environ={})
    defaults = load_config(None, environ={"SEGD_CONFIG": ""})
    assert shipped.health == defaults.health and shipped.metrics == defaults.metrics
    assert shipped.metrics.host == "127.0.0.1" and shipped.health.expected_workers == 1
