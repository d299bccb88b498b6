"""The service end to end: a real redis-server, the real `segd watch` and `segd worker` processes,
and a random-weights SAM2.1 tiny model at 256 px."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
from PIL import Image

from common import jobids
from tests.service_helpers import end_up, partial_results, picture, sha, start_up, write_slowly
from tests.worker.models.test_checkpoints import closed_port, server  # noqa: F401 (fixtures)

# --- the four kinds of writers -------------------------------------------------------------------


def _cp(path: Path, data: bytes, scratch: Path) -> None:
    source = scratch / path.name
    source.write_bytes(data)
    subprocess.run(["cp", str(source), str(path)], check=True)


def _mv(path: Path, data: bytes, scratch: Path) -> None:
    source = scratch / path.name
    source.write_bytes(data)
    subprocess.run(["mv", str(source), str(path)], check=True)


def _tmp_then_rename(path: Path, data: bytes) -> None:
    part = path.with_name(f".{path.name}.part")
    with open(part, "wb") as handle:
        for start in range(0, len(data), 2048):
            handle.write(data[start : start + 2048])
            time.sleep(0.01)
    os.rename(part, path)


def test_fifty_files_from_four_kinds_of_writers_give_fifty_results(service, tmp_path):
    """50 files written slowly, with cp, with mv and as .part-then-rename: exactly 50 result
    folders, no duplicates, the inbox ends empty, and every job hashed the complete file."""
    service.start("watch")
    service.start("worker")
    scratch = tmp_path / "scratch"  # same file system as the inbox, so mv is a rename
    scratch.mkdir()
    files = {f"img{i:02d}.jpg": picture(i) for i in range(50)}
    writers = [
        lambda p, d: write_slowly(p, d),
        lambda p, d: _cp(p, d, scratch),
        lambda p, d: _mv(p, d, scratch),
        lambda p, d: _tmp_then_rename(p, d),
    ]
    threads = [
        threading.Thread(target=writers[i % 4], args=(service.inbox / name, data))
        for i, (name, data) in enumerate(files.items())
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    service.wait_for(lambda: len(service.folders("done")) == 50, timeout=240, what="50 done jobs")

    results = service.results()
    assert sorted(results) == sorted(Path(n).stem for n in files)
    for name, data in files.items():
        manifest = results[Path(name).stem]
        # The worker read the complete file, and the watcher hashed the complete file.
        assert manifest["input"]["sha256"] == sha(data), name
        assert manifest["job_id"] == jobids.job_id(sha(data), None, "base"), name
    assert list(service.inbox.iterdir()) == []
    assert service.folders("failed") == [] and service.folders("claimed") == []
    assert not any((d / "duplicates").exists() for d in service.folders("done"))


def test_watcher_down_duplicates_and_a_late_mask(service, data_dir):
    """Files dropped while the watcher is stopped are processed when it starts; the same file
    dropped again is processed once; a mask dropped after its image re-segments it inside the region;
    `segd status --json` reports it all."""
    service.start("worker")
    shutil.copy(data_dir / "labpics_sample_image.jpg", service.inbox / "vessel.jpg")
    shutil.copy(data_dir / "groceries.jpg", service.inbox / "groceries.jpg")
    time.sleep(1.0)
    assert len(list(service.inbox.iterdir())) == 2  # nobody is watching yet
    service.start("watch")
    service.wait_for(lambda: len(service.results()) == 2, what="the two results")
    first = service.results()["groceries"]

    shutil.copy(data_dir / "groceries.jpg", service.inbox / "groceries.jpg")
    service.wait_for(
        lambda: (
            not any(service.inbox.iterdir())
            and any((d / "duplicates").is_dir() for d in service.folders("done"))
        ),
        what="the duplicate to be filed",
    )
    done = service.folders("done")
    assert len(done) == 2
    duplicates = [d for d in done if (d / "duplicates").is_dir()]
    assert (
        len(duplicates) == 1
        and (next((duplicates[0] / "duplicates").iterdir()) / "groceries.jpg").exists()
    )
    time.sleep(1.0)
    assert service.results()["groceries"] == first  # not segmented again

    shutil.copy(data_dir / "labpics_sample_region_mask.png", service.inbox / "vessel.mask.png")
    service.wait_for(
        lambda: (service.results()["vessel"].get("mask") or {}).get("name") == "vessel.mask.png",
        what="the re-segmented vessel",
    )
    index = cv2.imread(str(service.outbox / "vessel" / "index.png"), cv2.IMREAD_UNCHANGED)
    region = cv2.imread(str(data_dir / "labpics_sample_region_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert index.max() >= 1 and not index[~region].any()
    # The image was kept in done/ and used again (the claim moves there just after publishing).
    service.wait_for(lambda: len(service.folders("done")) == 3, what="the third done job")

    status = subprocess.run(
        [sys.executable, "-m", "segd", "status", "--json"],
        env=service.env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["redis"]["ok"] is True
    assert set(data["queues"]) == {"segment", "train", "video"}
    assert data["last_hour"]["done"] == 3 and data["last_hour"]["failed"] == 0
    (worker,) = data["workers"]
    assert (
        worker["device"] == "cpu"
        and worker["model_version"] == "base"
        and worker["random_weights"] is False
    )


def test_a_worker_killed_mid_job_completes_the_job_once_after_a_restart(service, tmp_path):
    """SIGKILL the worker during a job: after a restart the job completes exactly once, and no
    reader ever sees a partial result folder."""
    service.env["SEGD_SAMPLING__MODE"] = "random"
    service.env["SEGD_SAMPLING__POINTS"] = "400"  # a job of a few seconds
    service.env["SEGD_MODEL__DECODER_BATCH"] = "2"
    with partial_results(service.outbox, every_s=0.005) as partial_seen:
        service.start("watch")
        worker = service.start("worker")
        (service.inbox / "big.jpg").write_bytes(picture(7, size=(600, 800)))
        service.wait_for(
            lambda: (
                service.redis_client().zcard("rq:wip:segment") > 0
                or "segment: segment big.jpg" in service.log("worker")
            ),
            what="the job to start",
        )
        time.sleep(0.5)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        service.procs.pop("worker")
        assert service.results() == {}
        assert len(service.folders("claimed")) == 1
        service.start("worker")
        service.wait_for(
            lambda: len(service.folders("done")) == 1, what="the job after the restart"
        )
    assert partial_seen == []
    assert list(service.results()) == ["big"]
    assert service.folders("claimed") == [] and service.folders("failed") == []
    # The restarted worker or the watcher's reconcile (whichever looks first) re-enqueued it.
    assert "died during job" in service.log("worker") + service.log("watch")
    assert [e.name for e in service.outbox.iterdir()] == ["big"]  # no temp folder left


def test_redis_killed_or_flushed_with_jobs_queued_loses_nothing(service):
    """redis-server SIGKILLed with jobs queued, and a FLUSHALL: every claimed input still ends done."""
    service.start("watch")
    for i in range(5):
        (service.inbox / f"q{i}.jpg").write_bytes(picture(100 + i))
    service.wait_for(lambda: len(service.folders("claimed")) == 5, what="5 claims")
    service.wait_for(lambda: service.redis_client().llen("rq:queue:segment") == 5, what="5 queued")
    service.kill_redis()
    service.start_redis()  # same data folder: the append-only file brings the queue back
    service.redis_client().flushall()  # ... and even a flushed Redis is rebuilt from state/claimed/
    for i in range(5, 8):
        (service.inbox / f"q{i}.jpg").write_bytes(picture(100 + i))
    service.start("worker")
    service.wait_for(lambda: len(service.folders("done")) == 8, timeout=120, what="8 done")
    assert sorted(service.results()) == [f"q{i}" for i in range(8)]


def test_jobs_naming_other_callables_or_carrying_pickles_are_refused(service, tmp_path):
    """A job hash written straight into Redis that names os.mkdir, and a pickled payload, are both
    refused by the worker and nothing runs."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from common import queues

    connection = service.redis_client()
    target = tmp_path / "pwned"
    evil = Job.create(
        "os.mkdir",
        args=[str(target)],
        connection=connection,
        serializer=JSONSerializer,
        origin="segment",
    )
    evil.save()
    connection.rpush("rq:queue:segment", evil.id)

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(target) + "-pickle",))

    pickled = Job.create(
        queues.SEGMENT_JOB,
        kwargs={},
        connection=connection,
        serializer=JSONSerializer,
        origin="segment",
    )
    pickled.save()
    connection.hset(
        pickled.key,
        "data",
        zlib.compress(pickle.dumps((queues.SEGMENT_JOB, None, [Payload()], {}))),
    )
    connection.rpush("rq:queue:segment", pickled.id)

    service.start("worker", "--burst")
    assert service.procs["worker"].wait(timeout=120) == 0
    service.procs.pop("worker")
    assert not target.exists() and not Path(str(target) + "-pickle").exists()
    failed = set(x.decode() for x in connection.zrange("rq:failed:segment", 0, -1))
    assert {evil.id, pickled.id} <= failed
    assert "'os.mkdir' is not a segd job; refused" in service.log("worker")


def test_hostile_files_end_in_failed_with_a_reason_while_good_files_are_processed(
    service, tmp_path, data_dir
):
    """Truncated JPEG, empty file, text named .png, PNG bomb, symlink to a file outside, FIFO,
    wrong-size mask, non-UTF-8 and over-long names: each ends in state/failed/ with a reason;
    the good file is segmented; nothing hangs."""
    service.start("watch")
    service.start("worker")
    inbox = service.inbox
    truck = (data_dir / "truck.jpg").read_bytes()
    (inbox / "truncated.jpg").write_bytes(truck[: len(truck) // 2])
    (inbox / "empty.jpg").write_bytes(b"")
    (inbox / "notes.png").write_text("not an image")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, format="PNG")
    (inbox / "bomb.png").write_bytes(bomb.getvalue())
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(truck)
    os.symlink(outside, inbox / "link.jpg")
    os.mkfifo(inbox / "fifo.png")
    shutil.copy(data_dir / "labpics_sample_image.jpg", inbox / "vessel.jpg")
    Image.new("L", (10, 10), 255).save(inbox / "vessel.mask.png")
    fd = os.open(os.path.join(os.fsencode(inbox), b"caf\xe9.jpg"), os.O_CREAT | os.O_WRONLY)
    os.write(fd, truck)
    os.close(fd)
    (inbox / ("x" * 251 + ".jpg")).write_bytes(truck)
    shutil.copy(data_dir / "groceries.jpg", inbox / "good.jpg")

    service.wait_for(lambda: len(service.folders("failed")) == 9, timeout=120, what="9 failures")
    service.wait_for(lambda: "good" in service.results(), what="the good file")
    assert os.listdir(inbox) == []
    reasons = {}
    for folder in service.folders("failed"):
        error = json.loads((folder / "error.json").read_text())
        name = error.get("name")
        if name is None:
            name = json.loads((folder / "claim.json").read_text())["image"]
        reasons[name] = error["reason"]
    assert "corrupt or truncated" in reasons["truncated.jpg"]
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.png"]
    assert "20000x20000" in reasons["bomb.png"]
    assert "symbolic link" in reasons["link.jpg"]
    assert "not a regular file" in reasons["fifo.png"]
    assert "same size" in reasons["vessel.jpg"]
    assert "UTF-8" in reasons["caf\\xe9.jpg"]
    assert "longer than 250 bytes" in reasons["x" * 251 + ".jpg"]
    assert outside.read_bytes() == truck  # the symlink was moved, its target never touched
    assert service.procs["watch"].poll() is None and service.procs["worker"].poll() is None


def _up_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env.update(
        SEGD_MODEL__SIZE="tiny", SEGD_MODEL__IMAGE_SIZE="256", SEGD_WATCHER__SETTLE_S="0.2", **extra
    )
    return env


def test_segd_up_fetches_the_checkpoint_on_first_start_runs_everything_and_stops_cleanly(
    tmp_path,
    server,  # noqa: F811 (the fixture imported above)
):
    """First start with no checkpoint: `segd up` fetches the default one (from a local mirror here),
    starts a private Redis (unix socket, mode 700, append-only), the watcher and a worker; a dropped
    file is segmented with those weights; SIGINT (Ctrl-C) stops all of it and exits 0."""
    site = tmp_path / "up"
    site.mkdir()
    proc = start_up(site, _up_env(SEGD_MODEL__DOWNLOAD_URL=server.url), subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (site / "inbox").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        (site / "inbox" / "g.jpg").write_bytes(picture(3))
        manifest_path = site / "outbox" / "g" / "manifest.json"
        while not manifest_path.exists() and time.monotonic() < deadline + 60:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.2)
        manifest = json.loads(manifest_path.read_text())
        fetched = site / "models" / "base" / "sam2.1_hiera_tiny.pt"
        assert (
            manifest["model"]["checkpoint"] == str(fetched) and manifest["random_weights"] is False
        )
        assert [path for path, _ in server.requests] == ["/sam2.1_hiera_tiny.pt"]
        socket_path = site / "state" / "redis" / "redis.sock"
        assert socket_path.exists() and oct(socket_path.stat().st_mode & 0o777) == "0o700"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        end_up(proc)
    output = proc.stdout.read().decode()
    assert "private Redis on" in output and "stopping" in output
    assert any(p.name.startswith("appendonly") for p in (site / "state" / "redis").iterdir())


def test_segd_up_offline_first_start_says_where_to_put_the_checkpoint(tmp_path, closed_port):  # noqa: F811
    """First start with no checkpoint and no network: one message with the exact path, exit 3."""
    proc = subprocess.run(
        [sys.executable, "-m", "segd", "up"],
        cwd=tmp_path,
        env=_up_env(SEGD_MODEL__DOWNLOAD_URL=f"http://127.0.0.1:{closed_port}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3
    expected = tmp_path / "models" / "base" / "sam2.1_hiera_tiny.pt"
    assert f"place it at {expected}" in proc.stderr
    assert not (tmp_path / "state" / "redis" / "redis.sock").exists()  # nothing was started
