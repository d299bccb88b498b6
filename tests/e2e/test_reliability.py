"""Reliability end to end (issue 14): stalled writers, inputs that kill the worker, the model a
result is attributed to, namesake workers on other hosts, dead workers and watchers, masks whose
image never comes. A real redis-server, the real `segd watch` / `segd worker` / `segd up`
processes, a random-weights SAM2.1 tiny model at 256 px; a second "host" is a worker in its own
UTS namespace (`unshare -u`, root only) with another host name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from common import jobids
from common.names import ATTEMPTS_FILE
from tests.service_helpers import Service, end_up, picture, sha, start_up

SLOW_JOB = {  # a job of a few seconds on 2 cores, to act during it
    "SEGD_SAMPLING__MODE": "random",
    "SEGD_SAMPLING__POINTS": "400",
    "SEGD_MODEL__DECODER_BATCH": "2",
}
FAST_LIVENESS = {"SEGD_WORKER__HEARTBEAT_TTL_S": "3", "SEGD_WATCHER__HEARTBEAT_TTL_S": "3"}


@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    site = Service(tmp_path / "site", checkpoint=tiny_checkpoint, **FAST_LIVENESS)
    site.start_redis()
    yield site
    site.close()


def _segd(service: Service, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segd", *args],
        env={**service.env, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _error(folder: Path) -> dict:
    return json.loads((folder / "error.json").read_text())


def _on_host(service: Service, host: str, role: str, *args: str) -> subprocess.Popen:
    """`segd <role>` in its own UTS namespace whose host name is `host` (another machine, as far
    as segd can tell: same Redis, same shared folders)."""
    log = open(service.root / f"{role}-{host}.log", "ab")
    segd = " ".join([sys.executable, "-m", "segd", role, *args])
    proc = subprocess.Popen(
        ["unshare", "-u", "sh", "-c", f"hostname {host} && exec {segd}"],
        env=service.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service.procs[f"{role}-{host}"] = proc
    return proc


def _host_log(service: Service, role: str, host: str) -> str:
    path = service.root / f"{role}-{host}.log"
    return path.read_text(errors="replace") if path.exists() else ""


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a second host name needs `unshare -u` as root",
)


def _running(service: Service, job_id: str) -> bool:
    """True while job `job_id` is in RQ's started registry (a worker runs it)."""
    members = service.redis_client().zrange("rq:wip:segment", 0, -1)
    return any(m.decode().startswith(job_id) for m in members)


# --- 1. stalled writers -----------------------------------------------------------------------
def test_a_writer_that_stalls_with_the_file_open_is_waited_for_until_it_closes(service):
    """Half a JPEG written, then a pause far longer than watcher.settle_scan_s with the file still
    open, then the rest: the watcher waits for the close, and the job hashes the whole file."""
    service.start("watch")
    service.start("worker")
    # inotify reports opens from when the watcher watches: a file opened before is seen by
    # rescans only (docs/reliability.md).
    service.wait_for(lambda: "watching" in service.log("watch"), what="the watcher")
    data = picture(1, size=(240, 320))
    with open(service.inbox / "slow.jpg", "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(4.5)  # settle_scan_s is 1 s and the inbox is rescanned every second
        assert os.listdir(service.inbox) == ["slow.jpg"]  # still the writer's
        handle.write(data[len(data) // 2 :])
    service.wait_for(lambda: len(service.folders("done")) == 1, what="the job")
    manifest = service.results()["slow"]
    assert manifest["input"]["sha256"] == sha(data)
    assert manifest["job_id"] == jobids.job_id(sha(data), None, "base")
    assert service.folders("failed") == []


def test_a_claimed_file_that_changed_since_fails_clearly_instead_of_a_wrong_result(service):
    """A writer that kept writing through a descriptor after the claim: the bytes no longer match
    the claim's sha256, and the input ends in failed/ with that reason, nothing published."""
    service.start("watch")
    (service.inbox / "grows.jpg").write_bytes(picture(2))
    service.wait_for(lambda: len(service.folders("claimed")) == 1, what="the claim")
    (claim_dir,) = service.folders("claimed")
    with open(claim_dir / "grows.jpg", "ab") as handle:
        handle.write(b"more bytes from a writer that was not done")
    service.start("worker")
    service.wait_for(
        lambda: [(d / "error.json").exists() for d in service.folders("failed")] == [True],
        what="the failure and its error.json",
    )
    assert "changed after it was claimed" in _error(service.folders("failed")[0])["reason"]
    assert service.results() == {}


# --- 2. inputs that kill the worker -------------------------------------------------------------
def test_an_input_that_kills_the_worker_ends_in_failed_and_segd_up_keeps_serving(
    tmp_path, tiny_checkpoint
):
    """The worker SIGKILLed during one input three times (worker.retries = 2): `segd up` restarts
    it each time with a back-off, the other files are segmented meanwhile, and the input ends in
    state/failed/ saying the worker died on it 3 times; `segd up` is still running."""
    site = tmp_path / "up"
    site.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env.update(
        Service(tmp_path / "unused").env,  # the tiny model settings of the other tests
        **SLOW_JOB,
        **FAST_LIVENESS,
        SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint),
        SEGD_WORKER__RETRIES="2",
        SEGD_METRICS__PORT="0",
    )
    for key in ("SEGD_REDIS__URL", "SEGD_PATHS__INBOX", "SEGD_PATHS__OUTBOX", "SEGD_PATHS__STATE"):
        env.pop(key)
    env["SEGD_PATHS__MODELS"] = str(site / "models")
    log = open(tmp_path / "up.log", "wb")
    proc = start_up(site, env, log)
    from redis import Redis

    from common.queues import embedded_socket

    def output() -> str:
        return (tmp_path / "up.log").read_text(errors="replace")

    def wait(predicate, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"segd up exited ({proc.returncode}):\n{output()[-4000:]}"
            if predicate():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{output()[-4000:]}")

    try:
        wait(lambda: (site / "inbox").is_dir() and embedded_socket(site / "state").exists(), "up")
        redis = Redis(unix_socket_path=str(embedded_socket(site / "state")))
        poison = picture(66, size=(600, 800))
        poison_id = jobids.job_id(sha(poison), None, "base")
        (site / "inbox" / "poison.jpg").write_bytes(poison)
        attempts_file = site / "state" / "claimed" / poison_id / ATTEMPTS_FILE
        killed: list[int] = []
        counted = 0  # deaths on the poison input recorded so far

        def running_poison() -> int | None:
            """The pid of a live worker (not killed yet) with a run of the poison input recorded
            on disk and not ended, other than a decode-ahead (a few ms): a SIGKILL now is a death
            on that input. (RQ's wip registry is not enough: a kill before the job function
            records its run is not the input's doing and is rightly not counted.)"""
            try:
                record = json.loads(attempts_file.read_text())
            except (OSError, ValueError):
                return None
            runs = record.get("runs") or []
            in_progress = record.get("started", 0) - record.get("ended", 0) == counted + 1
            if not runs or not in_progress or runs[-1]["worker"] == "decode-ahead":
                return None
            beats = [redis.get(k) for k in redis.keys("segd:heartbeat:*")]
            live = {json.loads(b)["pid"] for b in beats if b is not None} - set(killed)
            return runs[-1]["pid"] if runs[-1]["pid"] in live else None

        def reaped(pid: int) -> bool:
            try:
                return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
            except OSError:
                return True

        # A kill that lands just after a short run ended (the prefetched job only writing its
        # result) is not a death on the input: kill again until three deaths are counted.
        while counted < 3 and len(killed) < 8:
            wait(lambda: running_poison() is not None, f"the poison job to run ({counted + 1})")
            pid = running_poison()
            if pid is None:  # its run ended between the two looks
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            if len(killed) == 1:
                for i in range(2):
                    (site / "inbox" / f"ok{i}.jpg").write_bytes(picture(10 + i))
            wait(lambda p=pid: reaped(p), "the killed worker to be gone")
            # Read before the restarted worker (back-off, model load) runs anything; once the
            # deaths are exhausted the claim may be in failed/ already.
            for kind in ("claimed", "failed"):
                record_file = site / "state" / kind / poison_id / ATTEMPTS_FILE
                if record_file.exists():
                    record = json.loads(record_file.read_text())
                    counted = record["started"] - record["ended"]
                    break
        assert counted == 3, f"{len(killed)} kills, {counted} deaths counted"
        failed = site / "state" / "failed" / poison_id
        wait(lambda: (failed / "error.json").exists(), "the poison input to fail")
        reason = _error(failed)["reason"]
        assert reason.startswith("the worker died while segmenting it 3 times"), reason
        assert (failed / "poison.jpg").read_bytes() == poison
        wait(
            lambda: (site / "outbox" / "ok0").is_dir() and (site / "outbox" / "ok1").is_dir(), "ok"
        )
        assert not (site / "outbox" / "poison").exists()
        assert proc.poll() is None
        assert output().count("worker exited with code -9; restarting it in") == len(killed)
        assert "keeps exiting" not in output()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        end_up(proc)


# --- 3. model attribution -----------------------------------------------------------------------
def test_results_name_the_model_that_ran_and_redrops_after_promote_and_rollback_run_again(
    service, tiny_checkpoint
):
    """Claimed under `base`, run after `segd models promote v1`: manifest, job id and done/ all
    say v1. After a rollback, and after promoting v1 again, re-dropping the same file segments it
    again (the outbox held the other version's result); a re-drop under the version that made the
    published result is a duplicate."""
    data = picture(3)
    models = service.root / "models"
    (models / "v1").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, models / "v1" / "model.pt")
    service.start("watch")
    (service.inbox / "x.jpg").write_bytes(data)
    service.wait_for(lambda: len(service.folders("claimed")) == 1, what="the claim under base")
    assert service.folders("claimed")[0].name == jobids.job_id(sha(data), None, "base")
    assert _segd(service, "models", "promote", "v1").returncode == 0
    service.start("worker")
    v1_id = jobids.job_id(sha(data), None, "v1")
    service.wait_for(lambda: len(service.folders("done")) == 1, what="the job")
    manifest = service.results()["x"]
    assert manifest["model"]["model_version"] == "v1" and manifest["job_id"] == v1_id
    assert [p.name for p in service.folders("done")] == [v1_id]

    def redrop_gives(version: str) -> None:
        (service.inbox / "x.jpg").write_bytes(data)
        service.wait_for(
            lambda: service.results()["x"]["model"]["model_version"] == version,
            what=f"x segmented again with {version}",
        )
        assert service.results()["x"]["job_id"] == jobids.job_id(sha(data), None, version)

    assert _segd(service, "models", "rollback").returncode == 0
    redrop_gives("base")
    assert _segd(service, "models", "promote", "v1").returncode == 0
    redrop_gives("v1")
    service.wait_for(lambda: service.folders("claimed") == [], what="the claim to be done")
    published = service.results()["x"]
    (service.inbox / "x.jpg").write_bytes(data)
    service.wait_for(
        lambda: (
            (service.state / "done" / v1_id / "duplicates").is_dir()
            and not any(service.inbox.iterdir())
        ),
        what="the duplicate",
    )
    assert service.results()["x"] == published
    assert service.folders("failed") == []


# --- 4. namesake workers ------------------------------------------------------------------------
@needs_root
def test_a_worker_named_like_a_live_one_on_another_host_is_refused(service):
    """Worker gpu0 on host A runs a job; a worker started as gpu0 on host B exits with a clear
    message and takes nothing; A's job completes once."""
    service.env.update(SLOW_JOB)
    service.start("watch")
    _on_host(service, "hosta", "worker", "--name", "gpu0")
    data = picture(4, size=(600, 800))
    job_id = jobids.job_id(sha(data), None, "base")
    (service.inbox / "a.jpg").write_bytes(data)
    service.wait_for(lambda: _running(service, job_id), what="A to run the job")
    b = _on_host(service, "hostb", "worker", "--name", "gpu0")
    assert b.wait(timeout=120) != 0
    service.procs.pop("worker-hostb")
    assert "a worker named gpu0 is already running on host hosta" in _host_log(
        service, "worker", "hostb"
    )
    service.wait_for(lambda: len(service.folders("done")) == 1, what="A's job")
    assert "died during job" not in _host_log(service, "worker", "hostb")
    assert service.results()["a"]["job_id"] == job_id
    assert service.folders("failed") == [] and service.folders("claimed") == []


@needs_root
def test_a_dead_namesake_on_another_host_is_recovered_once_its_heartbeat_expired(service):
    """Worker gpu0 on host A is SIGKILLed mid-job; gpu0 started on host B after A's heartbeat
    expired re-enqueues A's job and completes it."""
    service.env.update(SLOW_JOB)
    service.start("watch")
    a = _on_host(service, "hosta", "worker", "--name", "gpu0")
    data = picture(5, size=(600, 800))
    job_id = jobids.job_id(sha(data), None, "base")
    (service.inbox / "a.jpg").write_bytes(data)
    service.wait_for(lambda: _running(service, job_id), what="A to run the job")
    service.stop("worker-hosta", sig=signal.SIGKILL)
    assert a.poll() is not None
    service.wait_for(
        lambda: service.redis_client().get("segd:heartbeat:gpu0") is None, what="A's heartbeat"
    )
    _on_host(service, "hostb", "worker", "--name", "gpu0")
    service.wait_for(lambda: len(service.folders("done")) == 1, what="the job on B")
    assert service.results()["a"]["job_id"] == job_id


# --- 7. health --------------------------------------------------------------------------------
@needs_root
def test_a_sigkilled_worker_on_another_host_is_missing_and_its_job_runs_elsewhere(service):
    """A worker on another host is SIGKILLed mid-job: `segd status --check` reports the worker
    missing once its heartbeat expired (not after RQ's 7-minute key TTL), and the watcher gives
    its job to a live worker, which completes it; the death is counted on the claim."""
    service.env.update(SLOW_JOB)
    service.start("watch")
    _on_host(service, "hostc", "worker", "--name", "gpu-c")
    data = picture(6, size=(600, 800))
    job_id = jobids.job_id(sha(data), None, "base")
    (service.inbox / "c.jpg").write_bytes(data)
    service.wait_for(lambda: _running(service, job_id), what="C to run the job")
    assert _segd(service, "status", "--check").returncode == 0
    service.stop("worker-hostc", sig=signal.SIGKILL)
    service.wait_for(
        lambda: (
            "CRITICAL worker missing: 0 live on queue segment"
            in _segd(service, "status", "--check").stdout
        ),
        timeout=60,
        what="the check to see the worker gone",
    )
    service.start("worker")
    service.wait_for(lambda: len(service.folders("done")) == 1, what="the job elsewhere")
    assert "worker gpu-c died during job" in service.log("watch")
    attempts = json.loads((service.folders("done")[0] / "attempts.json").read_text())
    assert attempts["started"] - attempts["ended"] == 2  # C's death, then the run that finished


def test_the_check_reports_a_missing_or_dead_watcher(service):
    """No watcher: CRITICAL naming the missing watcher; a running watcher: OK; the watcher
    SIGKILLed: CRITICAL again once its heartbeat expired."""
    service.start("worker")
    service.wait_for(
        lambda: service.redis_client().scard("rq:workers:segment") == 1, what="the worker"
    )
    done = _segd(service, "status", "--check")
    assert done.returncode == 1
    assert "CRITICAL watcher missing: 0 with a live heartbeat, expected 1" in done.stdout
    service.start("watch")
    service.wait_for(
        lambda: _segd(service, "status", "--check").returncode == 0, what="OK with the watcher"
    )
    service.stop("watch", sig=signal.SIGKILL)
    service.wait_for(
        lambda: "CRITICAL watcher missing" in _segd(service, "status", "--check").stdout,
        timeout=60,
        what="the dead watcher to be reported",
    )


# --- 6. masks whose image never comes ---------------------------------------------------------
def test_a_mask_whose_image_never_comes_is_shown_warned_about_and_then_failed(service):
    """`x.mask.png` alone: `segd status` shows it waiting, `segd status --check` warns once it
    waited over health.stuck_after_s, and after watcher.orphan_mask_s it is in failed/ with a
    reason; the service keeps running."""
    service.env["SEGD_WATCHER__ORPHAN_MASK_S"] = "20"
    service.start("watch")
    Image.new("L", (16, 16), 255).save(service.inbox / "lonely.mask.png")
    service.wait_for(
        lambda: "lonely.mask.png waits for its image" in service.log("watch"), what="the wait"
    )
    time.sleep(1.1)  # waited over health.stuck_after_s = 1 below
    status = json.loads(_segd(service, "status", "--json").stdout)
    assert [m["name"] for m in status["waiting_masks"]] == ["lonely.mask.png"]
    assert "mask lonely.mask.png waits for its image" in _segd(service, "status").stdout
    check = _segd(
        service,
        "status",
        "--check",
        SEGD_HEALTH__STUCK_AFTER_S="1",
        SEGD_HEALTH__EXPECTED_WORKERS="0",
    )
    assert check.returncode == 1
    assert "WARNING mask lonely.mask.png has waited" in check.stdout
    service.wait_for(lambda: len(service.folders("failed")) == 1, what="the orphan mask to fail")
    error = _error(service.folders("failed")[0])
    assert error["name"] == "lonely.mask.png"
    assert error["reason"].startswith("its image never arrived")
    assert os.listdir(service.inbox) == []
