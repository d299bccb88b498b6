"""watcher.service: the watcher's own resilience (in-process, against a real redis-server)."""

import pytest

from common.config import load_config
from tests.service_helpers import Service
from watcher.service import Watcher


@pytest.fixture
def watcher(tmp_path):
    site = Service(tmp_path / "site")
    site.start_redis()
    config = load_config(None, {k: v for k, v in site.env.items() if k.startswith("SEGD_")})
    instance = Watcher(config)
    instance._start_observer()
    instance.site = site  # the test may stop and restart its redis-server
    yield instance
    instance.close()
    site.close()


def test_a_dead_observer_is_restarted_and_repeated_deaths_end_the_watcher(watcher):
    """If the observer thread dies, the watcher starts a new one (and rescans); if it keeps
    dying (more than 3 times in a minute) the watcher gives up so its service manager restarts it."""
    for _ in range(3):
        watcher.observer.stop()
        watcher.observer.join()
        assert not watcher.observer_healthy()
        assert watcher._check_observer() is True
        assert watcher.observer_healthy()
    watcher.observer.stop()
    watcher.observer.join()
    assert watcher._check_observer() is False


def test_claims_wait_on_disk_while_redis_is_down_and_are_enqueued_later(watcher, tmp_path):
    """With Redis unreachable a claim is kept on disk; reconcile enqueues it once Redis is back."""
    from common import queues

    image = watcher.inbox / "a.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg, but the watcher does not decode")
    watcher.rescan()
    watcher.seen["a.jpg"].since -= 60  # long unchanged: complete
    watcher.site.kill_redis()  # Redis is gone
    made = watcher.process()
    watcher.enqueue_pending()  # logs a warning, keeps the claim
    assert len(made) == 1 and made[0].job_id in watcher.pending_enqueue
    assert (watcher.state_dir / "claimed" / made[0].job_id).is_dir()
    watcher.site.start_redis()
    watcher.pending_enqueue.clear()  # as after a watcher restart: only the disk remembers
    assert watcher.reconcile() == 1
    assert queues.queue("segment", watcher.connection).job_ids == [made[0].job_id]


def test_a_part_file_is_left_alone_until_renamed_and_moved_aside_when_stale(watcher):
    """A `.part` file is a writer's temp file: never claimed, looked at again only once per
    rescan interval, and moved to failed/ with a reason once untouched for stale_part_s."""
    import os
    import time

    part = watcher.inbox / ".a.jpg.part"
    part.write_bytes(b"partial")
    watcher.rescan()
    watcher.seen[part.name].since -= 60
    assert watcher.process() == []
    assert part.exists() and watcher.seen[part.name].idle_until > time.monotonic()
    old = time.time() - watcher.cfg.stale_part_s - 10
    os.utime(part, (old, old))
    watcher.rescan()  # the new mtime is a change: a fresh entry, settling again
    watcher.seen[part.name].since -= 60
    watcher.process()
    assert not part.exists()
    (failed,) = [p for p in (watcher.state_dir / "failed").iterdir()]
    assert "partial upload left untouched" in (failed / "error.json").read_text()


def test_files_moved_into_a_frame_folder_do_not_make_the_folder_busy(watcher, tmp_path):
    """inotify reports a folder as modified when files are moved into it; a folder is never
    'open for writing', so a frame folder filled by renames is claimed once it settled (it was
    held for watcher.open_writer_timeout_s before)."""
    import shutil
    import time

    folder = watcher.inbox / "clip"
    folder.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(3):
        (staging / f"{i:05d}.jpg").write_bytes(b"\xff\xd8 frame %d" % i)
        shutil.move(staging / f"{i:05d}.jpg", folder / f"{i:05d}.jpg")
    time.sleep(1.0)  # the observer's events arrive (IN_MOVED_TO, the folder's IN_MODIFY)
    watcher.tracker.drain_events()
    assert "clip/00000.jpg" in watcher.seen and not watcher.tracker.busy("clip")
    deadline = time.monotonic() + 10
    made = []
    while not made and time.monotonic() < deadline:
        watcher.tracker.drain_events()
        made = watcher.process()
        time.sleep(0.05)
    assert [(m.image, m.folder) for m in made] == [("clip", "")]


def test_a_job_a_dead_worker_took_from_its_queue_before_starting_it_is_enqueued_again(watcher):
    """RQ pops a job from its queue (BLPOP for a worker of several queues, LMOVE into an
    intermediate list for a worker of one), then registers it as started: a worker SIGKILLed in
    between leaves the job QUEUED in no queue, and RQ never runs it. The reconcile after the one
    that first finds it missing enqueues it again (the first may catch a worker starting it);
    a job in its queue is left alone."""
    from rq.job import Job, JobStatus

    from common import queues

    (watcher.inbox / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    watcher.rescan()
    watcher.seen["a.jpg"].since -= 60  # long unchanged: complete
    (made,) = watcher.process()
    watcher.enqueue_pending()
    queue = queues.queue("segment", watcher.connection)
    assert queue.job_ids == [made.job_id]
    assert watcher.reconcile() == 0 and watcher.reconcile() == 0

    for take in (
        lambda: watcher.connection.lpop(queue.key),
        lambda: watcher.connection.lmove(queue.key, queue.intermediate_queue_key),
    ):
        take()  # a worker's dequeue, and nothing after: it died
        job = Job.fetch(
            made.job_id, connection=watcher.connection, serializer=queues.JSONSerializer
        )
        assert job.get_status() == JobStatus.QUEUED and queue.job_ids == []
        assert watcher.reconcile() == 0
        assert watcher.reconcile() == 1
        assert queue.job_ids == [made.job_id]
        assert watcher.connection.llen(queue.intermediate_queue_key) == 0
        assert watcher.reconcile() == 0
