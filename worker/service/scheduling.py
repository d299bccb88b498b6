"""RQ's scheduler in a thread of the worker, for the back-off of retried jobs.

RQ starts its scheduler as a forked process. A fork of a worker that holds a CUDA model keeps the
driver's files open, and a child left behind by a killed worker would hold them (and the GPU
memory) until it exits. As a daemon thread it dies with the worker. It moves jobs whose retry
time came from the scheduled registry back onto their queue; one scheduler per queue runs at a
time (RQ's lock), the others stand by.
"""

from __future__ import annotations

import threading

from rq.scheduler import RQScheduler
from rq.scheduler import run as run_scheduler


class ThreadScheduler(RQScheduler):
    """RQScheduler whose `start` runs it in a daemon thread (signals stay with the worker)."""

    def _install_signal_handlers(self):
        pass  # only the main thread may install them; the worker stops the thread instead

    def start(self):
        self._status = self.Status.STARTED
        self._process = threading.Thread(
            target=run_scheduler, args=(self,), name="rq-scheduler", daemon=True
        )
        self._process.start()
        return self._process


def start_scheduler(worker) -> None:
    """What `Worker._start_scheduler` does, with a ThreadScheduler."""
    worker.scheduler = ThreadScheduler(
        worker.queues, connection=worker.connection, serializer=worker.serializer
    )
    worker.scheduler.acquire_locks(auto_start=True)


def stop_scheduler(worker) -> None:
    """Ask the scheduler thread to stop and wait for it briefly (it sleeps at most its interval)."""
    scheduler = worker.scheduler
    if scheduler is None:
        return
    scheduler.request_stop()
    thread = scheduler._process
    if isinstance(thread, threading.Thread) and thread.is_alive():
        thread.join(timeout=scheduler.interval + 2)
