"""`segd trainer`: serves the `train` queue, each run in a fresh process.

RQ's forking Worker: the trainer process itself never imports torch (nor touches CUDA); each
job runs in a work horse forked for it, which loads the model, trains, publishes and exits, so
every run starts with a fresh CUDA context and gives all of its memory back. The parent keeps
the worker's heartbeat going during runs that take hours and kills a run past its timeout.
One SIGTERM lets the running job finish (RQ's warm shutdown); a run that is killed instead
(second signal, OOM, crash) is retried if it has retries left and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import queues
from common.config import Config
from common.errors import EXIT_OK
from worker.jobs import Runtime, install_runtime

log = logging.getLogger("segd.trainer")


def default_name() -> str:
    return f"segd-trainer-{socket.gethostname()}-{os.getpid()}"


class TrainerWorker(Worker):
    """RQ's forking worker on the `train` queue, JSON jobs, segd's allow-listing job class."""

    def __init__(self, config: Config, name: str | None = None):
        connection = queues.connect(config)
        super().__init__(
            [queues.queue(queues.TRAIN_QUEUE, connection)],
            connection=connection,
            name=name or default_name(),
            serializer=JSONSerializer,
            job_class=queues.SegdJob,
        )


def _worker_gone(connection, name: str | None) -> bool:
    """True when the worker that started a job is no longer running (or never registered)."""
    if not name:
        return True
    key = Worker.redis_worker_namespace_prefix + name
    info = connection.hgetall(key)
    if not info or b"death" in info:
        return True
    host, pid = info.get(b"hostname", b"").decode(), int(info.get(b"pid", b"0") or 0)
    if host == socket.gethostname() and pid:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def recover_interrupted(config: Config, connection) -> list[str]:
    """Re-enqueue runs whose trainer died mid-run (SIGKILL, power loss, `segd up` stopped).

    Each comes back as a new job with `run` = the old job's run, so it resumes from its last
    checkpoint; the old job is removed. Returns the new job ids.
    """
    train_queue = queues.queue(queues.TRAIN_QUEUE, connection)
    started = StartedJobRegistry(queues.TRAIN_QUEUE, connection=connection)
    recovered = []
    for job_id in started.get_job_ids(cleanup=False):
        try:
            job = queues.SegdJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        if job.func_name != queues.TRAIN_JOB or not _worker_gone(connection, job.worker_name):
            continue
        kwargs = dict(job.kwargs)
        kwargs.setdefault("run", job.id)
        dataset = kwargs.pop("dataset")
        started.remove_executions(job)
        job.delete()
        new = queues.enqueue_train(
            train_queue,
            dataset,
            kwargs,
            timeout_s=int(job.timeout or config.training.job_timeout_s),
            retries=config.training.retries,
        )
        log.warning("training job %s was interrupted; resuming it as job %s", job_id, new.id)
        recovered.append(new.id)
    return recovered


def run(config: Config, name: str | None = None, burst: bool = False) -> int:
    """Serve the train queue until SIGTERM (or, with `burst`, until it is empty)."""
    install_runtime(Runtime(config))  # config only: the model is loaded by each run
    worker = TrainerWorker(config, name=name)
    recover_interrupted(config, worker.connection)
    log.info("trainer %s serving queue %r", worker.name, queues.TRAIN_QUEUE)
    if (
        "torch" in sys.modules
    ):  # importing is harmless; using CUDA or torch threads before fork is not
        log.warning(
            "torch was imported by the trainer process; runs still start in forked processes"
        )
    worker.work(burst=burst, logging_level="INFO")
    return EXIT_OK
