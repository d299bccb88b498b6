"""segd.retry: failed inputs sent through the queue again, with a real redis-server (no worker)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common import attempts, jobids, queues, state
from common.config import load_config
from common.names import ATTEMPTS_FILE, RETRIES_FILE
from segd import retry
from tests.service_helpers import Service

JOB_ID = "ab" * 16


def _config(site: Service):
    return load_config(None, environ=site.env)


def _failed_job(site: Service, died: int = 3) -> Path:
    """failed/<JOB_ID>/ as a job leaves it after the transient horizon: its claim, its input,
    error.json and an attempts record with `died` deaths."""
    claimed = site.state / state.CLAIMED / JOB_ID
    claimed.mkdir(parents=True)
    (claimed / "x.jpg").write_bytes(b"the picture")
    claim = state.Claim(JOB_ID, "x", "x.jpg", None, "base", state.now_iso(), 7, folder="visit")
    state.write_claim(claimed, claim)
    for _ in range(died):
        attempts.begin(claimed, "gpu0")
    return state.fail(
        site.state, JOB_ID, "no space left on the device (OSError: [Errno 28]), still after ..."
    )


def test_a_failed_job_goes_back_to_claimed_with_a_fresh_budget_and_is_enqueued(site):
    """The claim folder moves back to claimed/, error.json and the deaths counted on it move to
    retries.json (so `worker.retries` counts afresh), and its job is in the segment queue."""
    _failed_job(site)
    (outcome,) = retry.retry(_config(site), ["visit/x.jpg"])

    assert outcome == retry.RetryOutcome("visit/x.jpg", JOB_ID, None)
    back = site.state / state.CLAIMED / JOB_ID
    assert (back / "x.jpg").read_bytes() == b"the picture"
    assert not (site.state / state.FAILED / JOB_ID).exists()
    assert not (back / state.ERROR_FILE).exists() and not (back / ATTEMPTS_FILE).exists()
    assert attempts.deaths(back) == 0
    (earlier,) = json.loads((back / RETRIES_FILE).read_text())["retries"]
    assert earlier["error"]["reason"].startswith("no space left on the device")
    assert earlier["attempts"]["started"] == 3
    queue = queues.queue(queues.SEGMENT_QUEUE, site.redis_client())
    assert queue.job_ids == [JOB_ID]
    assert queue.fetch_job(JOB_ID).kwargs == {"job_id": JOB_ID, "image": "x.jpg", "mask": None}


def test_retrying_twice_enqueues_once_and_answers_the_same_job(site):
    """Idempotent: the second retry (by job id) finds the claim back in claimed/ and queues
    nothing more."""
    _failed_job(site)
    config = _config(site)
    first = retry.retry(config, [JOB_ID])
    second = retry.retry(config, [JOB_ID])

    assert first == second == [retry.RetryOutcome(JOB_ID, JOB_ID, None)]
    assert queues.queue(queues.SEGMENT_QUEUE, site.redis_client()).job_ids == [JOB_ID]


def test_all_retries_every_failed_entry_and_refuses_what_cannot_run(site, tmp_path):
    """--all: a failed job is queued again; an inbox entry the watcher refused as a symbolic link
    is refused again with that reason and stays in failed/; an unknown name is refused."""
    _failed_job(site)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"not mine")
    (site.inbox / "link.jpg").symlink_to(outside)
    refused = state.fail_entry(site.state, site.inbox / "link.jpg", "is a symbolic link")
    config = _config(site)

    outcomes = {o.target: o for o in retry.retry(config, all_failed=True)}
    assert outcomes[JOB_ID].job_id == JOB_ID and outcomes[JOB_ID].refused is None
    assert outcomes[refused.name].job_id is None
    assert "symbolic link" in outcomes[refused.name].refused
    assert refused.is_dir() and not os.path.lexists(site.inbox / "link.jpg")
    assert outside.read_bytes() == b"not mine"

    (unknown,) = retry.retry(config, ["nope.jpg"])
    assert unknown.refused == "nothing left to retry: no failed input has this name or id"


def test_a_refused_entry_acceptable_now_goes_back_to_its_inbox_folder(site):
    """An entry refused into failed/ from inbox folder `visit/` (e.g. by an older segd's name
    rule) is moved back to inbox/visit/ under its name; the outcome names the job id the
    watcher will claim it under."""
    (site.inbox / "visit").mkdir()
    dropped = site.inbox / "visit" / "café crème.jpg"
    dropped.write_bytes(b"a picture")
    entry = state.fail_entry(site.state, dropped, "an older rule", folder="visit")

    (outcome,) = retry.retry(_config(site), ["visit/café crème.jpg"])
    expected = jobids.job_id(jobids.file_sha256(dropped.parent / "café crème.jpg"), None, "base")
    assert outcome == retry.RetryOutcome("visit/café crème.jpg", expected, None)
    assert dropped.read_bytes() == b"a picture"
    assert not entry.exists()
