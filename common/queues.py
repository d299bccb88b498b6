"""Redis connections, queue names and the job contract shared by the watcher and the workers.

Light (redis and rq only). Jobs are JSON (never pickle) and may name only segd's own job
functions: `SegdJob` refuses anything else when a worker is about to run it, so a job hash
written straight into Redis cannot make a worker call `os.mkdir` or any other importable name.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from common import outcomes, retry_waits
from common.config import Config
from common.errors import EXIT_CONFIG, SegdError
from common.names import is_video_input, shown
from common.redact import redacted_url

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

    # Metrics are counted in the transaction that records the job's end (see common/outcomes.py).
    def _metrics_type(self) -> str:
        """The job's short function name; `refused` for one that is not a segd job, or whose
        payload cannot even be read (a pickle): such a job must still end in the failed registry."""
        try:
            name = self.func_name
        except Exception:
            return "refused"
        return outcomes.job_type(name) if name in ALLOWED_CALLABLES else "refused"

    def _handle_success(self, result_ttl, pipeline, *args, **kwargs):
        super()._handle_success(result_ttl, pipeline, *args, **kwargs)
        failed = outcomes.result_failed(self._result)
        outcomes.record_job(pipeline, self, self._metrics_type(), failed=failed)

    def _handle_failure(self, exc_string, pipeline, *args, **kwargs):
        super()._handle_failure(exc_string, pipeline, *args, **kwargs)
        outcomes.record_job(pipeline, self, self._metrics_type(), failed=True)


class UnsafeSocketFolder(SegdError):
    """The folder meant for the private Redis socket is not private to this user."""

    exit_code = EXIT_CONFIG


def private_folder_problem(folder: Path) -> str | None:
    """Why `folder` is not a private folder of this user (None when it is, or is missing).

    Checked with lstat: a symlink, a non-directory, another owner or any mode but 0700 is
    refused, so a folder another local user created (or linked) in advance is never used.
    """
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.getuid():
        return f"is owned by uid {info.st_uid}, not by this user (uid {os.getuid()})"
    if stat.S_IMODE(info.st_mode) != 0o700:
        return f"has mode {stat.S_IMODE(info.st_mode):04o}, not 0700"
    return None


def _refuse(folder: Path, problem: str) -> UnsafeSocketFolder:
    return UnsafeSocketFolder(
        f"{folder} {problem}: refusing it as the private Redis socket folder (another local user "
        "could answer in Redis's place); remove it, or choose a shorter paths.state"
    )


def _runtime_base() -> Path:
    """$XDG_RUNTIME_DIR when it is a private folder of this user (it is per-user by design),
    else the temp folder (where the socket folder itself must then be created exclusively)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            info = os.lstat(runtime)
        except OSError:
            info = None
        if (
            info is not None
            and stat.S_ISDIR(info.st_mode)
            and info.st_uid == os.getuid()
            and not info.st_mode & 0o077
        ):
            return Path(runtime)
    return Path(tempfile.gettempdir())


# The queues a segd worker (`segd worker`) serves; the trainer serves TRAIN_QUEUE.
WORKER_QUEUES = (SEGMENT_QUEUE, VIDEO_QUEUE)


def job_timeout_s(config: Config, queue_name: str) -> int:
    """The RQ timeout of the jobs of `queue_name`."""
    return {
        SEGMENT_QUEUE: config.worker.job_timeout_s,
        VIDEO_QUEUE: config.video.job_timeout_s,
        TRAIN_QUEUE: config.training.job_timeout_s,
    }[queue_name]


def stop_timeout_s(config: Config, queue_names=WORKER_QUEUES, margin_s: int = 60) -> int:
    """How long a stop may wait for a worker serving `queue_names` to finish its job: the longest
    job timeout among them plus `margin_s` (a stop lets the running job finish)."""
    return max(job_timeout_s(config, name) for name in queue_names) + margin_s


def embedded_socket(state_dir: str | os.PathLike) -> Path:
    """The unix socket of the private redis-server for this state folder.

    `<state>/redis/redis.sock`, or, when that would be too long for a unix socket,
    `<$XDG_RUNTIME_DIR or the temp folder>/segd-<uid>-<hash of the state path>/redis.sock`. That
    folder must be private (see `private_folder_problem`): UnsafeSocketFolder otherwise, so no
    client ever talks to a socket another user put there. `make_socket_folder` creates it.
    """
    path = Path(state_dir).resolve() / "redis" / SOCKET_NAME
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(Path(state_dir).resolve())).hexdigest()[:16]
    name = f"segd-{os.getuid()}-{digest}"
    folder = _runtime_base() / name
    if len(os.fsencode(folder / SOCKET_NAME)) > MAX_SOCKET_PATH:
        folder = Path(tempfile.gettempdir()) / name
    problem = private_folder_problem(folder)
    if problem:
        raise _refuse(folder, problem)
    return folder / SOCKET_NAME


def make_socket_folder(socket: Path) -> None:
    """Create the socket's folder 0700 (a fallback folder exclusively: mkdir without exist_ok,
    then checked), or tighten `<state>/redis` to 0700; UnsafeSocketFolder when not private."""
    folder = socket.parent
    try:
        os.mkdir(folder, 0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    except FileExistsError:
        info = os.lstat(folder)
        owned_dir = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
        if owned_dir and folder.name == "redis":  # <state>/redis: ours, only too open
            os.chmod(folder, 0o700)
    problem = private_folder_problem(folder)
    if problem:
        raise _refuse(folder, problem)


def redis_url(config: Config) -> str:
    """`redis.url` when set, else the private server's unix socket."""
    return config.redis.url or f"unix://{embedded_socket(config.paths.state)}"


def shown_redis_url(config: Config) -> str:
    """The Redis URL as segd prints it: never with its password."""
    return redacted_url(redis_url(config))


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
    waits: list[int] | None = None,
) -> Job | None:
    """Enqueue `worker.jobs.segment` for a claim; None when a job with this id already exists.
    waits: seconds before each retry (see `retry_policy`)."""
    try:
        return segment_queue.enqueue(
            SEGMENT_JOB,
            job_id=job_id,
            kwargs={"job_id": job_id, "image": image, "mask": mask},
            job_timeout=timeout_s,
            retry=retry_policy(retries, waits),
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            unique=True,
            description=f"segment {shown(image)}" + (f" in {shown(mask)}" if mask else ""),
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
    waits: list[int] | None = None,
) -> Job | None:
    """Enqueue `worker.jobs.segment_video` for a claimed video file or frame folder; None when a
    job with this id already exists. waits: seconds before each retry (see `retry_policy`)."""
    try:
        return video_queue.enqueue(
            VIDEO_JOB,
            job_id=job_id,
            kwargs={"job_id": job_id, "video": video, "mask": mask},
            job_timeout=timeout_s,
            retry=retry_policy(retries, waits),
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            unique=True,
            description=f"segment video {shown(video)}" + (f" in {shown(mask)}" if mask else ""),
        )
    except DuplicateJobError:
        return None


def retry_policy(retries: int, waits: list[int] | None) -> Retry | None:
    """RQ's Retry for a segment or video job: `retries` immediate retries after an unexpected
    error, or, with `waits` (transient back-off), as many retries as there are waits, each after
    its wait (RQ's scheduler re-enqueues them; worker.jobs stops retrying unexpected errors
    after `worker.retries`)."""
    if waits:
        return Retry(max=max(retries, len(waits)), interval=waits)
    return Retry(max=retries) if retries else None


def transient_waits(config: Config) -> list[int]:
    """The back-off before each transient retry (worker.transient_retry_s)."""
    return retry_waits.intervals(
        config.worker.transient_retry_s, config.worker.transient_backoff_max_s
    )


def enqueue_claim(connection: Redis, claim, config: Config) -> Job | None:
    """Enqueue the job a claim (`common.state.Claim`) needs: a video job for a video file or a
    frame folder, else a segment job. None when it is already queued or running.

    A job of that id that has ended (a claim of the same content made again: after a rollback
    the outbox held another model version's result) is replaced."""
    job = _enqueue_claim(connection, claim, config)
    if job is not None:
        return job
    try:
        old = Job.fetch(claim.job_id, connection=connection, serializer=JSONSerializer)
        status = old.get_status(refresh=False)
    except NoSuchJobError:
        return _enqueue_claim(connection, claim, config)
    if status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        old.delete()
        return _enqueue_claim(connection, claim, config)
    return None


def _enqueue_claim(connection: Redis, claim, config: Config) -> Job | None:
    if is_video_input(claim.image):
        return enqueue_video(
            queue(VIDEO_QUEUE, connection),
            claim.job_id,
            claim.image,
            claim.mask,
            timeout_s=job_timeout_s(config, VIDEO_QUEUE),
            retries=config.worker.retries,
            waits=transient_waits(config),
        )
    return enqueue_segment(
        queue(SEGMENT_QUEUE, connection),
        claim.job_id,
        claim.image,
        claim.mask,
        timeout_s=job_timeout_s(config, SEGMENT_QUEUE),
        retries=config.worker.retries,
        waits=transient_waits(config),
    )
