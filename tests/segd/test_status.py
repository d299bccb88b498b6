"""`segd status`'s text rendering of what `collect` gathered."""

from segd.status import render


def _data(*workers: dict) -> dict:
    return {
        "redis": {"url": "unix:///x.sock", "ok": True},
        "queues": {},
        "workers": list(workers),
        "last_hour": {"done": 0, "failed": 0, "files_per_minute": 0.0},
        "waiting": {"inbox": 0, "claimed": 0},
        "latest_failures": [],
    }


def test_workers_show_their_queues_and_a_trainer_shows_no_model():
    """A segment worker shows its device and model; the trainer (no resident model, no info
    record) shows its queue and state only, never 'None'."""
    text = render(
        _data(
            {
                "name": "segd-h-0",
                "queues": ["segment", "video"],
                "host": "h",
                "device": "cuda:0",
                "model": "sam2.1_hiera_small",
                "model_version": "bottles-20261122-101500",
                "random_weights": False,
                "state": "idle",
            },
            {"name": "segd-trainer-h-7", "queues": ["train"], "host": "h", "state": "busy"},
        )
    )
    lines = [line for line in text.splitlines() if line.startswith("worker")]
    assert lines == [
        "worker   segd-h-0 [segment, video] on h (cuda:0), model sam2.1_hiera_small "
        "version bottles-20261122-101500: idle",
        "worker   segd-trainer-h-7 [train] on h: busy",
    ]
    assert "None" not in text


def _done_last_hour(tmp_path, state_dir, inbox) -> int:
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env.update(
        SEGD_PATHS__STATE=str(state_dir),
        SEGD_PATHS__INBOX=str(inbox),
        SEGD_REDIS__URL=f"unix://{tmp_path}/no-redis.sock",
    )
    status = subprocess.run(
        [sys.executable, "-m", "segd", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    return json.loads(status.stdout)["last_hour"]["done"]


def test_done_in_the_last_hour_counts_jobs_by_when_they_ended(tmp_path):
    """`segd status --json` counts a job that ended just now though it was claimed two hours
    ago (a rename keeps the folder's mtime), and not a job that ended two hours ago though the
    same file was dropped again just now (a duplicate refreshes the folder's mtime)."""
    import datetime as dt
    import json
    import os
    import time

    from common import state
    from watcher import claims

    inbox, state_dir = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    (inbox / "old.jpg").write_bytes(b"claimed long ago")
    waited = claims.claim(state_dir, inbox / "old.jpg", None, "base")
    two_hours_ago = time.time() - 2 * 3600
    claimed_dir = state_dir / "claimed" / waited.job_id
    os.utime(claimed_dir, (two_hours_ago, two_hours_ago))
    state.finish(state_dir, waited.job_id, model_version="base")  # ends now
    assert _done_last_hour(tmp_path, state_dir, inbox) == 1

    (inbox / "early.jpg").write_bytes(b"ended long ago")
    early = claims.claim(state_dir, inbox / "early.jpg", None, "base")
    done = state.finish(state_dir, early.job_id, model_version="base")
    ended = json.loads((done / state.ENDED_FILE).read_text())
    ended["ended_at"] = dt.datetime.fromtimestamp(two_hours_ago, dt.UTC).isoformat()
    (done / state.ENDED_FILE).write_text(json.dumps(ended))  # as written two hours ago
    os.utime(done / state.ENDED_FILE, (two_hours_ago, two_hours_ago))
    os.utime(done, (two_hours_ago, two_hours_ago))
    (inbox / "early.jpg").write_bytes(b"ended long ago")
    assert claims.claim(state_dir, inbox / "early.jpg", None, "base") is None  # a duplicate
    assert done.stat().st_mtime > two_hours_ago + 3600  # the drop refreshed the folder's mtime
    assert _done_last_hour(tmp_path, state_dir, inbox) == 1

    # The same picture for another name, segmented again: its run ends under the job's
    # duplicates/ (an old folder whose duplicates/ exists already) and counts.
    os.utime(done, (two_hours_ago, two_hours_ago))
    (inbox / "again.jpg").write_bytes(b"ended long ago")
    rerun = claims.claim(state_dir, inbox / "again.jpg", None, "base", outbox=tmp_path / "out")
    assert rerun is not None and rerun.job_id == early.job_id
    landed = state.finish(state_dir, rerun.job_id, model_version="base")
    assert landed.parent == done / state.DUPLICATES
    assert _done_last_hour(tmp_path, state_dir, inbox) == 2


def test_waiting_in_the_inbox_counts_files_and_folders_holding_files_only(tmp_path):
    """A file and a folder with a file in a subfolder wait; a batch folder whose files were all
    claimed (it stays in the inbox for more) and a writer's temp file do not."""
    from common.config import load_config
    from segd.status import collect

    inbox = tmp_path / "inbox"
    (inbox / "emptied batch").mkdir(parents=True)
    (inbox / "batch" / "day 2").mkdir(parents=True)
    (inbox / "batch" / "day 2" / "样品 01.jpg").write_bytes(b"a picture")
    (inbox / "photo#12.jpg").write_bytes(b"a picture")
    (inbox / ".photo.jpg.part").write_bytes(b"half a picture")
    config = load_config(
        None,
        environ={
            "SEGD_PATHS__INBOX": str(inbox),
            "SEGD_PATHS__STATE": str(tmp_path / "state"),
            "SEGD_REDIS__URL": f"unix://{tmp_path}/no-redis.sock",
        },
    )
    assert collect(config)["waiting"]["inbox"] == 2


def test_claimed_counts_copies_waiting_for_their_pictures_job(tmp_path):
    """A job folder in claimed/ and a copy of a picture waiting for that job (its claim.json
    written) count as claimed; a claim half-way in (no claim.json yet) and other hidden entries
    do not."""
    from common.config import load_config
    from segd.status import collect

    claimed = tmp_path / "state" / "claimed"
    for name, with_claim in (("a" * 32, True), (".incoming-1", True), (".incoming-2", False)):
        (claimed / name).mkdir(parents=True)
        if with_claim:
            (claimed / name / "claim.json").write_text("{}")
    (claimed / ".claim.json.tmp-1").write_text("{}")
    config = load_config(
        None,
        environ={
            "SEGD_PATHS__INBOX": str(tmp_path / "inbox"),
            "SEGD_PATHS__STATE": str(tmp_path / "state"),
            "SEGD_REDIS__URL": f"unix://{tmp_path}/no-redis.sock",
        },
    )
    assert collect(config)["waiting"]["claimed"] == 2
