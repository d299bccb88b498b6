"""common.queues: JSON segment jobs on a real redis-server, allow-listed job functions, and
where the private server's socket lives."""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path

import pytest
from rq import Callback
from rq.job import Job
from rq.serializers import JSONSerializer

from common import queues
from common.config import load_config
from tests.service_helpers import Service

JOB = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    site = Service(tmp_path_factory.mktemp("site"))
    try:
        site.start_redis(appendonly=False)
        yield site
    finally:
        site.close()


@pytest.fixture
def conn(service):
    client = service.redis_client()
    client.flushall()
    yield client
    client.close()


def fetch(conn, job_id: str) -> queues.SegdJob:
    return queues.SegdJob.fetch(job_id, connection=conn, serializer=JSONSerializer)


def test_enqueue_segment_puts_a_segment_job_with_its_arguments_timeout_and_retries(conn):
    """enqueue_segment puts worker.jobs.segment on queue "segment" under the job id, with the
    kwargs job_id/image/mask, the given timeout and `retries` retries left."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    made = queues.enqueue_segment(segment, JOB, "x.jpg", "x.mask.png", timeout_s=123, retries=2)

    assert isinstance(made, queues.SegdJob)
    assert segment.name == "segment" and segment.job_ids == [JOB]
    stored = fetch(conn, JOB)
    assert stored.origin == "segment"
    assert stored.func_name == "worker.jobs.segment"
    assert list(stored.args) == []
    assert stored.kwargs == {"job_id": JOB, "image": "x.jpg", "mask": "x.mask.png"}
    assert stored.timeout == 123
    assert stored.retries_left == 2
    assert stored.description == "segment x.jpg in x.mask.png"


def test_enqueue_segment_without_retries_sets_no_retry(conn):
    """retries=0 enqueues a job with no Retry at all (and a mask of None is kept as None)."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    queues.enqueue_segment(segment, JOB, "x.jpg", None, timeout_s=60, retries=0)

    stored = fetch(conn, JOB)
    assert stored.retries_left is None
    assert stored.kwargs["mask"] is None
    assert stored.description == "segment x.jpg"


def test_a_second_enqueue_of_the_same_job_id_returns_none_and_keeps_the_first(conn):
    """Job ids are unique: enqueueing an existing id again returns None and changes nothing."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    assert queues.enqueue_segment(segment, JOB, "x.jpg", None, timeout_s=60, retries=1)

    again = queues.enqueue_segment(segment, JOB, "y.jpg", "y.mask.png", timeout_s=5, retries=0)

    assert again is None
    assert segment.job_ids == [JOB]
    stored = fetch(conn, JOB)
    assert stored.kwargs == {"job_id": JOB, "image": "x.jpg", "mask": None}
    assert stored.timeout == 60
    assert queues.enqueue_segment(segment, OTHER, "x.jpg", None, timeout_s=60, retries=1)
    assert segment.job_ids == [JOB, OTHER]


def test_the_stored_job_data_is_json_not_pickle(conn):
    """The raw Redis field "data" (zlib-compressed by RQ) is JSON: [function, instance, args,
    kwargs]."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    made = queues.enqueue_segment(segment, JOB, "x.jpg", None, timeout_s=60, retries=1)

    raw = conn.hget(made.key, "data")
    try:
        raw = zlib.decompress(raw)
    except zlib.error:
        pass
    assert not raw.startswith(b"\x80")  # a pickle protocol header
    assert json.loads(raw) == [
        "worker.jobs.segment",
        None,
        [],
        {"job_id": JOB, "image": "x.jpg", "mask": None},
    ]


def test_segd_job_resolves_the_segment_function(conn):
    """The allow-listed function is resolved normally: .func is worker.jobs.segment."""
    from worker.jobs import segment as segment_function

    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    queues.enqueue_segment(segment, JOB, "x.jpg", None, timeout_s=60, retries=1)

    assert fetch(conn, JOB).func is segment_function


def test_segd_job_refuses_a_job_naming_another_function_and_does_not_call_it(conn, tmp_path):
    """A job hash naming os.mkdir raises RefusedJob when its function is resolved, and the
    folder it would create is never made."""
    pwned = tmp_path / "pwned"
    planted = Job.create(
        "os.mkdir", args=[str(pwned)], connection=conn, serializer=JSONSerializer, id=JOB
    )
    planted.save()

    job = fetch(conn, JOB)
    with pytest.raises(queues.RefusedJob, match=r"'os\.mkdir' is not a segd job") as refused:
        _ = job.func
    assert str(refused.value) == f"job {JOB}: function 'os.mkdir' is not a segd job; refused"
    assert not pwned.exists()


def test_segd_job_refuses_an_allowed_name_bound_to_an_instance(conn):
    """A job hash rewritten in Redis to carry an instance (a bound method) is refused even
    though its function name is allowed."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    made = queues.enqueue_segment(segment, JOB, "x.jpg", None, timeout_s=60, retries=1)
    data = json.dumps([queues.SEGMENT_JOB, "os", [], {}]).encode()
    conn.hset(made.key, "data", zlib.compress(data))

    with pytest.raises(queues.RefusedJob, match="bound methods are not segd jobs"):
        _ = fetch(conn, JOB).func


def test_segd_job_refuses_callbacks_naming_other_functions(conn):
    """Success, failure and stopped callbacks that name a non-segd function are refused."""
    planted = Job.create(
        queues.SEGMENT_JOB,
        kwargs={"job_id": JOB, "image": "x.jpg", "mask": None},
        connection=conn,
        serializer=JSONSerializer,
        id=JOB,
        on_success=Callback("os.remove"),
        on_failure=Callback("os.system"),
        on_stopped=Callback("shutil.rmtree"),
    )
    planted.save()
    job = fetch(conn, JOB)

    with pytest.raises(queues.RefusedJob, match=r"success callback 'os\.remove' is not"):
        _ = job.success_callback
    with pytest.raises(queues.RefusedJob, match=r"failure callback 'os\.system' is not"):
        _ = job.failure_callback
    with pytest.raises(queues.RefusedJob, match=r"stopped callback 'shutil\.rmtree' is not"):
        _ = job.stopped_callback


def test_the_segment_queue_uses_json_and_the_allow_listing_job_class(conn):
    """queue() builds a queue with the JSON serializer and SegdJob as its job class."""
    segment = queues.queue(queues.SEGMENT_QUEUE, conn)
    assert segment.serializer is JSONSerializer
    assert segment.job_class is queues.SegdJob


def test_embedded_socket_is_under_a_short_state_folder(tmp_path):
    """For a short state path the socket is <state>/redis/redis.sock (absolute, resolved)."""
    state_dir = tmp_path / "st"
    expected = state_dir.resolve() / "redis" / "redis.sock"
    assert len(os.fsencode(expected)) <= 100, "precondition: tmp_path is short enough"

    assert queues.embedded_socket(state_dir) == expected
    assert queues.embedded_socket(str(state_dir)) == expected


def test_embedded_socket_for_a_relative_state_folder_is_absolute(tmp_path, monkeypatch):
    """A relative state path is resolved against the working directory."""
    monkeypatch.chdir(tmp_path)
    assert queues.embedded_socket("state") == tmp_path.resolve() / "state" / "redis" / "redis.sock"


def test_embedded_socket_for_a_deep_state_folder_is_a_short_stable_temp_path(tmp_path, monkeypatch):
    """A state path too long for a unix socket (and no $XDG_RUNTIME_DIR) gets a short path under
    the temp folder, the same for the same state folder and different for another."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    other = tmp_path / ("d" * 60) / ("f" * 60)
    assert len(os.fsencode(deep / "redis" / "redis.sock")) > 100

    socket = queues.embedded_socket(deep)

    assert len(os.fsencode(socket)) <= 100
    assert socket.name == "redis.sock"
    assert socket.parent.parent == Path(tempfile.gettempdir())
    assert socket.parent.name.startswith(f"segd-{os.getuid()}-")
    assert queues.embedded_socket(str(deep)) == socket
    assert queues.embedded_socket(other) != socket


@pytest.fixture
def deep_state(tmp_path, monkeypatch) -> Path:
    """A state path too long for a unix socket, with the temp folder moved into tmp_path (so the
    predictable fallback folder can be planted) and no $XDG_RUNTIME_DIR."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    temp = tmp_path / "t"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return tmp_path / ("d" * 60) / ("e" * 60)


def _fallback_folder(state: Path) -> Path:
    import hashlib

    digest = hashlib.sha256(os.fsencode(state.resolve())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"segd-{os.getuid()}-{digest}"


def test_a_socket_folder_another_user_could_have_made_0755_is_refused(deep_state):
    """A folder pre-created at the predictable fallback path with mode 0755 is refused, by the
    client (embedded_socket) and by the server (make_socket_folder), naming the folder."""
    planted = _fallback_folder(deep_state)
    planted.mkdir(mode=0o755)
    os.chmod(planted, 0o755)

    with pytest.raises(queues.UnsafeSocketFolder, match="has mode 0755, not 0700") as excinfo:
        queues.embedded_socket(deep_state)
    assert str(planted) in str(excinfo.value)
    with pytest.raises(queues.UnsafeSocketFolder, match="has mode 0755, not 0700"):
        queues.make_socket_folder(planted / "redis.sock")
    assert oct(planted.stat().st_mode & 0o777) == "0o755"  # not silently taken over


def test_a_symlink_at_the_socket_folder_path_is_refused(deep_state, tmp_path):
    """A symlink planted at the fallback path (to a 0700 folder) is refused, never followed."""
    target = tmp_path / "attacker"
    target.mkdir(mode=0o700)
    planted = _fallback_folder(deep_state)
    planted.symlink_to(target)

    with pytest.raises(queues.UnsafeSocketFolder, match="is a symbolic link"):
        queues.embedded_socket(deep_state)
    with pytest.raises(queues.UnsafeSocketFolder, match="is a symbolic link"):
        queues.make_socket_folder(planted / "redis.sock")
    assert list(target.iterdir()) == []


def test_the_socket_folder_is_created_0700_even_with_an_open_umask(deep_state):
    """make_socket_folder creates the fallback folder itself, mode 0700 whatever the umask, and
    embedded_socket then accepts it."""
    socket = queues.embedded_socket(deep_state)
    old = os.umask(0)
    try:
        queues.make_socket_folder(socket)
    finally:
        os.umask(old)

    info = os.lstat(socket.parent)
    assert info.st_mode & 0o777 == 0o700 and info.st_uid == os.getuid()
    assert queues.embedded_socket(deep_state) == socket


def test_a_private_runtime_dir_is_preferred_for_the_socket_folder(
    deep_state, tmp_path, monkeypatch
):
    """With a private $XDG_RUNTIME_DIR the fallback socket folder goes there, not to /tmp; an
    $XDG_RUNTIME_DIR open to others is not used. The runtime folder is a short one in /tmp: under
    a deep pytest tmp_path (pytest-100/...) the socket path would pass 100 bytes and fall back."""
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        os.chmod(runtime, 0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        assert queues.embedded_socket(deep_state).parent.parent == runtime

        os.chmod(runtime, 0o755)
        assert queues.embedded_socket(deep_state).parent.parent == Path(tempfile.gettempdir())
    finally:
        os.rmdir(runtime)


def test_redis_url_prefers_the_configured_url(tmp_path):
    """redis.url wins; without it the URL is the private server's unix socket for paths.state."""
    state_dir = tmp_path / "st"
    configured = load_config(
        None,
        environ={
            "SEGD_REDIS__URL": "redis://db.example:6379/2",
            "SEGD_PATHS__STATE": str(state_dir),
        },
    )
    private = load_config(None, environ={"SEGD_PATHS__STATE": str(state_dir)})

    assert queues.redis_url(configured) == "redis://db.example:6379/2"
    assert queues.redis_url(private) == f"unix://{queues.embedded_socket(state_dir)}"


def test_connect_reaches_the_configured_server(service, conn):
    """connect() opens a connection to redis.url that reaches the running server."""
    config = load_config(None, environ={"SEGD_REDIS__URL": f"unix://{service.socket}"})
    client = queues.connect(config)
    try:
        client.set("segd-test", b"1")
        assert conn.get("segd-test") == b"1"
    finally:
        client.close()
