"""`segd worker`: an RQ SimpleWorker that keeps SAM2 loaded and runs segd's jobs in-process.

SimpleWorker, not RQ's forking Worker: a CUDA context does not survive fork, and reloading the
model per job would cost seconds. One SIGTERM finishes the current job, then exits (RQ's warm
shutdown). A worker restarted under the same name after a crash (SIGKILL, OOM) finds its dead
predecessor's registration and re-enqueues the job it was running, from the claim on disk.
"""

from __future__ import annotations

import json
import logging
import os
import socket

from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from worker import metrics, queues, state
from worker.config import Config
from worker.errors import EXIT_OK, SegdError
from worker.jobs import Runtime, install_runtime

log = logging.getLogger("segd.worker")
INFO_KEY = "segd:worker:{name}"  # host, device, model version: what `segd status` shows


def default_name() -> str:
    """`segd-<host>-<slot>`: one slot per GPU (CUDA_VISIBLE_DEVICES), else `cpu`."""
    slot = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(",", "_") or "cpu"
    return f"segd-{socket.gethostname()}-{slot}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SegdWorker(SimpleWorker):
    """SimpleWorker on segd's queues with the allow-listing job class and JSON jobs."""

    def __init__(self, config: Config, runtime: Runtime, name: str | None = None, queue_names=None):
        connection = queues.connect(config)
        names = queue_names or [queues.SEGMENT_QUEUE, queues.VIDEO_QUEUE]
        super().__init__(
            [queues.queue(n, connection) for n in names],
            connection=connection,
            name=name or default_name(),
            serializer=JSONSerializer,
            job_class=queues.SegdJob,
        )
        self.config = config
        self.runtime = runtime

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
            **metrics.gpu_memory(info.device),
        }
        try:
            self.connection.set(INFO_KEY.format(name=self.name), json.dumps(data), ex=24 * 3600)
        except RedisError as exc:
            log.warning("could not publish worker info: %s", exc)

    def execute_job(self, job, queue):
        super().execute_job(job, queue)
        self.publish_info()  # the model may have been reloaded for this job

    def recover_namesake(self) -> str | None:
        """If a dead worker of this name is still registered, re-enqueue its job; return its id."""
        key = self.redis_worker_namespace_prefix + self.name
        if not self.connection.exists(key) or self.connection.hexists(key, "death"):
            return None
        old = SimpleWorker.find_by_key(
            key, self.connection, job_class=queues.SegdJob, serializer=JSONSerializer
        )
        if old is None:
            return None
        if (
            old.hostname == socket.gethostname()
            and old.pid
            and _alive(old.pid)
            and old.pid != os.getpid()
        ):
            raise SegdError(
                f"a worker named {self.name} is already running (pid {old.pid}); give this one --name"
            )
        job_id = old.get_current_job_id()
        old.register_death()
        self.connection.delete(key)
        if not job_id:
            return None
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
            StartedJobRegistry(job.origin, connection=self.connection).remove_executions(job)
            job.delete()
        except Exception:
            pass  # already gone: the claim on disk is what matters
        claim_dir = state.folder(self.config.paths.state, state.CLAIMED, job_id)
        if claim_dir.is_dir():
            made = state.read_claim(claim_dir)
            queues.enqueue_claim(self.connection, made, self.config)
            log.warning("%s died during job %s; enqueued it again", self.name, job_id)
        return job_id

    def teardown(self):
        try:
            self.connection.delete(INFO_KEY.format(name=self.name))
        except RedisError:
            pass
        super().teardown()


def run(config: Config, name: str | None = None, burst: bool = False) -> int:
    """`segd worker`: load the model, then serve the segment and video queues until SIGTERM."""
    runtime = Runtime(config)
    install_runtime(runtime)
    runtime.segmenter()  # load before taking a job: a broken model fails here, not per job
    worker = SegdWorker(config, runtime, name=name)
    worker.recover_namesake()
    worker.publish_info()
    log.info("worker %s serving queues %s", worker.name, ", ".join(worker.queue_names()))
    worker.work(burst=burst, logging_level="INFO")
    return EXIT_OK
