"""The waits between retries of a job that failed for a transient reason (no space left, an I/O
error, GPU memory, Redis lost): 2 s, doubling up to `worker.transient_backoff_max_s`, for as many
retries as `worker.transient_retry_s` covers. RQ schedules them (the workers run its scheduler).

Light (standard library only): the watcher uses it when it enqueues.
"""

from __future__ import annotations

FIRST_WAIT_S = 2


def intervals(horizon_s: int, max_wait_s: int) -> list[int]:
    """Whole seconds to wait before each transient retry; their sum reaches `horizon_s`."""
    waits: list[int] = []
    wait, total = FIRST_WAIT_S, 0
    while total < horizon_s:
        step = max(1, min(wait, max_wait_s))
        waits.append(step)
        total += step
        wait *= 2
    return waits
