"""The free-space pause: a worker takes no job while the outbox's or the state folder's file
system is below `worker.min_free_bytes` (see common.diskspace), and resumes by itself.

While paused the worker keeps its registration alive (heartbeats), shows state `suspended` and a
`paused` reason in its info for `segd status`, and a SIGTERM still stops it at once.
"""

from __future__ import annotations

import logging
import time

from common.config import Config
from common.diskspace import low_space

log = logging.getLogger("segd.worker")
CHECK_EVERY_S = 2.0
PAUSED_STATE = "suspended"


def wait_for_space(worker, config: Config, check_every_s: float = CHECK_EVERY_S) -> None:
    """Return once every watched file system has at least the floor free (at once when it has).

    `worker` is the RQ worker: it is kept alive (heartbeat, maintenance) while waiting, and
    `worker.paused` holds the reason (None when running), published with its info."""
    low = low_space(config)
    if not low:
        return
    reason = "; ".join(str(item) for item in low)
    log.warning("%s: pausing (no job is taken)", reason)
    worker.paused = reason
    worker.set_state(PAUSED_STATE)
    worker.publish_info()
    try:
        while low:
            worker.heartbeat()
            if worker.should_run_maintenance_tasks:
                worker.run_maintenance_tasks()
            time.sleep(check_every_s)  # SIGTERM raises StopRequested here (RQ's handler)
            low = low_space(config)
            if low and "; ".join(str(item) for item in low) != reason:
                reason = "; ".join(str(item) for item in low)
                worker.paused = reason
                worker.publish_info()
    finally:
        worker.paused = None
    log.info("free space is back above worker.min_free_bytes: taking jobs again")
    worker.publish_info()
