"""The worker's overlap (worker/prefetch.py): while one job writes its results, the next queued
input is decoded and segmented, and a SIGKILL at that moment loses nothing.

Real redis-server, real `segd watch` and `segd worker` processes (random-weights tiny SAM2.1 at
256 px)."""

from __future__ import annotations

import os
import signal
import time

from tests.service_helpers import Service, partial_results, picture
from worker.image.outputs import RESULT_FILES


def _writing(service: Service) -> bool:
    """True while some worker has a result folder being written (the hidden temp folder)."""
    return any(e.name.startswith(".tmp-") for e in service.outbox.iterdir())


def _kill_mid_write(service: Service, worker, tries: int = 4) -> None:
    """SIGKILL the worker while it writes a result with the next input queued (so prefetched),
    until a kill lands before that result was published: its temp folder is then left in the
    outbox. A kill that lands just after the folder was renamed into place (the write takes a
    fraction of a second) is a miss: the worker is restarted and the next write tried."""
    queue = service.redis_client()
    for _ in range(tries):
        deadline = time.monotonic() + 300
        while not (_writing(service) and queue.llen("rq:queue:segment") > 0):
            assert worker.poll() is None, service.log("worker")[-3000:]
            assert time.monotonic() < deadline, "no result written with an input queued"
            time.sleep(0.002)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        service.procs.pop("worker")
        if _writing(service):  # the dead worker's temp folder: it died before publishing
            return
        worker = service.start("worker")
    raise AssertionError(f"{tries} kills, none while a result was being written")


def test_a_worker_killed_while_writing_one_result_and_prefetching_the_next_loses_nothing(service):
    """SIGKILL the worker while it writes one result and its prefetch thread decodes and
    segments the next queued input: after a restart under the same name every input ends
    exactly once in done/, every result folder is whole, and no reader ever saw a partial one."""
    service.env["SEGD_SAMPLING__MODE"] = "random"
    service.env["SEGD_WORKER__PREFETCH"] = "true"
    count = 6  # enough queued inputs for a few tries at killing mid-write
    with partial_results(service.outbox, every_s=0.002) as partial_seen:
        service.start("watch")
        worker = service.start("worker")
        for i in range(count):
            (service.inbox / f"photo{i}.jpg").write_bytes(picture(i, size=(1500, 2000), quality=95))
        _kill_mid_write(service, worker)
        assert len(service.folders("done")) < count
        service.start("worker")
        service.wait_for(
            lambda: len(service.folders("done")) == count,
            timeout=600,
            what="every input done after the restart",
        )
    assert partial_seen == []
    done = [p.name for p in service.folders("done")]
    assert len(done) == len(set(done)) == count
    assert service.folders("claimed") == [] and service.folders("failed") == []
    results = service.results()
    assert sorted(results) == [f"photo{i}" for i in range(count)]
    for stem in results:
        assert sorted(p.name for p in (service.outbox / stem).iterdir()) == sorted(RESULT_FILES)
        assert results[stem]["input"]["name"] == f"{stem}.jpg"
    # The rerun of the claim whose write was cut removed the temp folder the kill left there.
    assert [e.name for e in service.outbox.iterdir() if e.name.startswith(".")] == []
    # The restarted namesake or the watcher's reconcile (whichever notices first) re-enqueues it.
    assert "died during job" in service.log("worker") + service.log("watch")
    assert "prefetched while the previous result was written" in service.log("worker")
