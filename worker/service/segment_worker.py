"""`segd worker`: an RQ SimpleWorker that keeps SAM2 loaded and runs segd's jobs in-process.

SimpleWorker, not RQ's forking Worker: a CUDA context does not survive fork, and reloading the
model per job would cost seconds. One SIGTERM finishes the current job, then exits (RQ's warm
shutdown). A heartbeat thread keeps the worker's name alive in Redis (worker/service/heartbeat.py);
a name a live worker holds is refused, and a worker restarted under the name of a dead one
re-enqueues the job it was running, from the claim on disk (worker/service/namesake.py).
It runs RQ's scheduler in a thread (the back-off of retried jobs, worker.service.scheduling) and
takes no job while the outbox or state file system is below its free-space floor
(worker.service.disk).
"""

from __future__ import annotations

import json
import logging
import os
import socket

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from common import liveness, queues
from common.config import Config
from common.errors import EXIT_OK
from worker.jobs import Runtime, install_runtime
from worker.models.devices import gpu_memory
from worker.service import disk, namesake, scheduling
from worker.service.heartbeat import Heartbeat

log = logging.getLogger("segd.worker")


class SegdWorker(SimpleWorker):
    """SimpleWorker on segd's queues with the allow-listing job class and JSON jobs."""

    def __init__(self, config: Config, runtime: Runtime, name: str | None = None, queue_names=None):
        connection = queues.connect(config)
        names = queue_names or [queues.SEGMENT_QUEUE, queues.VIDEO_QUEUE]
        super().__init__(
            [queues.queue(n, connection) for n in names],
            connection=connection,
            name=name or liveness.default_name(),
            serializer=JSONSerializer,
            job_class=queues.SegdJob,
        )
        self.config = config
        self.runtime = runtime
        self.segd_heartbeat = Heartbeat(connection, self.name, config.worker.heartbeat_ttl_s)
        self.paused: str | None = None  # why no job is taken now (low disk space), else None

    def publish_info(self) -> None:
        """Tell `segd status` what this worker runs (kept a day, refreshed after each job)."""
        segmenter = self.runtime.segmenter()
        info = segmenter.model.info
        data = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": info.device,
            "dtype": info.dtype,
            "model": info.name,
            "model_version": info.model_version,
            "random_weights": info.random_weights,
            "paused": self.paused,
            **gpu_memory(info.device),
        }
        try:
            self.connection.set(
                liveness.INFO_KEY.format(name=self.name), json.dumps(data), ex=24 * 3600
            )
        except RedisError as exc:
            log.warning("could not publish worker info: %s", exc)

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        disk.wait_for_space(self, self.config)  # no job while the outbox or state is full
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _start_scheduler(self, *args, **kwargs):
        scheduling.start_scheduler(self)

    def stop_scheduler(self):
        scheduling.stop_scheduler(self)

    def execute_job(self, job, queue):
        super().execute_job(job, queue)
        self.publish_info()  # the model may have been reloaded for this job

    def recover_namesake(self) -> str | None:
        """Take this worker's name (SegdError while a live worker on any host holds it), start
        the heartbeat, and re-enqueue a dead predecessor's job; returns its id."""
        return namesake.take_name(self, self.segd_heartbeat, self.config)

    def teardown(self):
        self.segd_heartbeat.stop()
        try:
            self.connection.delete(liveness.INFO_KEY.format(name=self.name))
        except RedisError:
            pass
        super().teardown()


def run(config: Config, name: str | None = None, burst: bool = False) -> int:
    """`segd worker`: load the model, then serve the segment and video queues until SIGTERM."""
    runtime = Runtime(config)
    install_runtime(runtime)
    runtime.segmenter()  # load before taking a job: a broken model fails here, not per job
    worker = SegdWorker(config, runtime, name=name)
    try:
        worker.recover_namesake()
        worker.publish_info()
        log.info("worker %s serving queues %s", worker.name, ", ".join(worker.queue_names()))
        # The scheduler re-enqueues retries when their back-off ends (transient failures).
        worker.work(burst=burst, logging_level="INFO", with_scheduler=True)
    finally:
        worker.segd_heartbeat.stop()
    return EXIT_OK
