"""How many times a worker started and ended each claimed job, counted on disk in the claim
folder, so a worker that dies on an input (killed, out of memory) cannot retry it forever.

    <state>/claimed/<job_id>/attempts.json   {"started": n, "ended": m, "runs": [...]}

A job start adds to `started` (fsynced before the job runs); an end that leaves the claim in
claimed/ (an error RQ will retry) adds to `ended`; a published or failed job leaves claimed/.
So `started - ended` is how many times a worker died while running it. Once that is more than
`worker.retries`, the input goes to state/failed/ instead of to a worker again: every path that
runs or re-enqueues a claim (the job itself, a restarted namesake, the watcher's reconcile) asks
`exhausted` first. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from common import state
from common.durable import replace_json
from common.names import ATTEMPTS_FILE

MAX_RUNS_KEPT = 20


def read(claim_dir: Path) -> dict:
    """The attempts record ({"started": 0, "ended": 0, "runs": []} when there is none)."""
    try:
        data = json.loads((claim_dir / ATTEMPTS_FILE).read_text())
        if isinstance(data, dict):
            return {"started": 0, "ended": 0, "runs": [], **data}
    except (OSError, ValueError):
        pass
    return {"started": 0, "ended": 0, "runs": []}


def deaths(claim_dir: Path) -> int:
    """How many runs of this claim started and never ended (their worker died)."""
    data = read(claim_dir)
    return max(int(data["started"]) - int(data["ended"]), 0)


def begin(claim_dir: Path, worker: str) -> int:
    """Record that `worker` starts the job now (durably, before it runs). Returns the deaths
    counted before this start."""
    data = read(claim_dir)
    died = max(int(data["started"]) - int(data["ended"]), 0)
    data["started"] = int(data["started"]) + 1
    data["runs"] = (
        data["runs"]
        + [
            {
                "worker": worker,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "at": state.now_iso(),
            }
        ]
    )[-MAX_RUNS_KEPT:]
    replace_json(claim_dir / ATTEMPTS_FILE, data)
    return died


def end(claim_dir: Path) -> None:
    """Record that the run that began last ended without dying (an error that will be retried)."""
    if not claim_dir.is_dir():
        return
    data = read(claim_dir)
    data["ended"] = int(data["ended"]) + 1
    replace_json(claim_dir / ATTEMPTS_FILE, data)


def exhausted_reason(died: int, retries: int) -> str | None:
    """The failure reason once the worker died on an input more than `retries` times."""
    if died <= retries:
        return None
    return (
        f"the worker died while segmenting it {died} times (killed or out of memory; "
        f"worker.retries = {retries}); not tried again"
    )


def fail_if_exhausted(state_dir: str | os.PathLike, job_id: str, retries: int) -> str | None:
    """Move claim `job_id` to state/failed/ when its deaths exhaust `retries`; returns the reason
    (None: it may run again)."""
    claim_dir = state.folder(state_dir, state.CLAIMED, job_id)
    reason = exhausted_reason(deaths(claim_dir), retries)
    if reason is not None:
        state.fail(state_dir, job_id, reason)
    return reason
