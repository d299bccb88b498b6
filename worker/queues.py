"""Redis connections, queue names and the job contract shared by the watcher and the workers.

Light (redis and rq only). Jobs are JSON (never pickle) and may name only segd's own job
functions: `SegdJob` refuses anything else when a worker is about to run it, so a job hash
written straight into Redis cannot make a worker call `os.mkdir` or any other importable name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from worker import metrics
from worker.config import Config
from worker.inputs import is_video_input

SEGMENT_QUEUE = "segment"
TRAIN_QUEUE = "train"
VIDEO_QUEUE = "video"
QUEUES = (SEGMENT_QUEUE, VIDEO_QUEUE, TRAIN_QUEUE)

SEGMENT_JOB = "worker.jobs.segment"
TRAIN_JOB = "worker.jobs.train"
VIDEO_JOB = "worker.jobs.segment_video"
# The only callables a segd worker will run.
ALLOWED_CALLABLES = frozenset({SEGMENT_JOB, TRAIN_JOB, VIDEO_JOB})

SOCKET_NAME = "redis.sock"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux


class RefusedJob(Exception):
    """A job names a callable that is not one of segd's jobs (or carries an instance)."""


class SegdJob(Job):
    """An RQ job that runs only allow-listed segd callables."""

    def _check(self, name: str | None, what: str) -> None:
        if name is not None and name not in ALLOWED_CALLABLES:
            raise RefusedJob(f"job {self.id}: {what} {name!r} is not a segd job; refused")

    @property
    def func(self):
        self._check(self.func_name, "function")
        if self.instance is not None:
            raise RefusedJob(f"job {self.id}: bound methods are not segd jobs; refused")
        return super().func

    @property
    def success_callback(self):
        self._check(self._success_callback_name, "success callback")
        return super().success_callback

    @property
    def failure_callback(self):
        self._check(self._failure_callback_name, "failure callback")
        return super().failure_callback

    @property
    def stopped_callback(self):
        self._check(self._stopped_callback_name, "stopped callback")
        return super().stopped_callback

    # Metrics are counted in the transaction that records the job's end (see worker/metrics.py).
    def _metrics_type(self) -> str:
        """The job's short function name; `refused` for one that is not a segd job, or whose
        payload cannot even be read (a pickle): such a job must still end in the failed registry."""
        try:
            name = self.func_name
        except Exception:
            return "refused"
        return metrics.job_type(name) if name in ALLOWED_CALLABLES else "refused"

    def _handle_success(self, result_ttl, pipeline, *args, **kwargs):
        super()._handle_success(result_ttl, pipeline, *args, **kwargs)
        failed = metrics.result_failed(self._result)
        metrics.record_job(pipeline, self, self._metrics_type(), failed=failed)

    def _handle_failure(self, exc_string, pipeline, *args, **kwargs):
        super()._handle_failure(exc_string, pipeline, *args, **kwargs)
        metrics.record_job(pipeline, self, self._metrics_type(), failed=True)


def embedded_socket(state_dir: str | os.PathLike) -> Path:
    """The unix socket of the private redis-server for this state folder.

    `<state>/redis/redis.sock`, or a short path under the temp folder derived from it when that
    would be too long for a unix socket.
    """
    path = Path(state_dir).resolve() / "redis" / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(Path(state_dir).resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"segd-{digest}" / SOCKET_NAME


def redis_url(config: Config) -> str:
    """`redis.url` when set, else the private server's unix socket."""
    return config.redis.url or f"unix://{embedded_socket(config.paths.state)}"


def connect(config: Config) -> Redis:
    """A Redis connection for `config` (bytes responses, as RQ expects)."""
    return Redis.from_url(redis_url(config), socket_connect_timeout=5, health_check_interval=30)


def queue(name: str, connection: Redis) -> Queue:
    """A segd queue: JSON serializer, allow-listing job class."""
    return Queue(name, connection=connection, serializer=JSONSerializer, job_class=SegdJob)


def enqueue_segment(
    segment_queue: Queue,
    job_id: str,
    image: str,
    mask: str | None,
    *,
    timeout_s: int,
    retries: int,
) -> Job | None:
    """Enqueue `worker.jobs.segment` for a claim; None when a job with this id already exists."""
    try:
        return segment_queue.enqueue(
            SEGMENT_JOB,
            job_id=job_id,
            kwargs={"job_id": job_id, "image": image, "mask": mask},
            job_timeout=timeout_s,
            retry=Retry(max=retries) if retries else None,  # immediate: no scheduler needed
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            unique=True,
            description=f"segment {image}" + (f" in {mask}" if mask else ""),
        )
    except DuplicateJobError:
        return None


def enqueue_train(
    train_queue: Queue,
    dataset: str,
    options: dict,
    *,
    timeout_s: int,
    retries: int,
    job_id: str | None = None,
) -> Job:
    """Enqueue `worker.jobs.train` (JSON arguments only); a retry resumes from the checkpoint."""
    return train_queue.enqueue(
        TRAIN_JOB,
        job_id=job_id,
        kwargs={"dataset": dataset, **options},
        job_timeout=timeout_s,
        retry=Retry(max=retries) if retries else None,
        result_ttl=30 * 24 * 3600,
        failure_ttl=30 * 24 * 3600,
        description=f"train on {dataset}",
    )


def enqueue_video(
    video_queue: Queue,
    job_id: str,
    video: str,
    mask: str | None,
    *,
    timeout_s: int,
    retries: int,
) -> Job | None:
    """Enqueue `worker.jobs.segment_video` for a claimed video file or frame folder; None when a
    job with this id already exists."""
    try:
        return video_queue.enqueue(
            VIDEO_JOB,
            job_id=job_id,
            kwargs={"job_id": job_id, "video": video, "mask": mask},
            job_timeout=timeout_s,
            retry=Retry(max=retries) if retries else None,
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            unique=True,
            description=f"segment video {video}" + (f" in {mask}" if mask else ""),
        )
    except DuplicateJobError:
        return None


def enqueue_claim(connection: Redis, claim, config: Config) -> Job | None:
    """Enqueue the job a claim (`worker.state.Claim`) needs: a video job for a video file or a
    frame folder, else a segment job. None when it is already queued."""
    if is_video_input(claim.image):
        return enqueue_video(
            queue(VIDEO_QUEUE, connection),
            claim.job_id,
            claim.image,
            claim.mask,
            timeout_s=config.video.job_timeout_s,
            retries=config.worker.retries,
        )
    return enqueue_segment(
        queue(SEGMENT_QUEUE, connection),
        claim.job_id,
        claim.image,
        claim.mask,
        timeout_s=config.worker.job_timeout_s,
        retries=config.worker.retries,
    )
