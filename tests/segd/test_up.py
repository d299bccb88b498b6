"""segd.up: its private redis-server is private to the user; how long a stop waits for the
worker; how dying children are restarted. (`segd up` itself runs end to end in tests/e2e/.)"""

from __future__ import annotations

import os
import stat

from redis import Redis

from common.config import load_config
from segd.backoff import Backoff
from segd.up import RedisServer, worker_stop_timeout_s


def test_private_redis_tightens_its_folder_and_writes_the_append_only_file_0600(tmp_path):
    """A state/redis folder left 0755 (by `segd systemd install` or an older segd) with an
    appendonly.aof of 0644 becomes 0700 / 0600, and what Redis writes is not readable by others."""
    state = tmp_path / "st"
    folder = state / "redis"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o755)
    old_aof = folder / "appendonly.aof"
    old_aof.write_bytes(b"")
    os.chmod(old_aof, 0o644)

    server = RedisServer(state).start()
    try:
        client = Redis(unix_socket_path=str(server.socket))
        client.set("segd-job", b"queued work")
        client.bgrewriteaof()
        client.close()
    finally:
        server.stop()

    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    written = [p for p in folder.iterdir() if p.is_file() and p.name != "redis.conf"]
    assert any(p.name.startswith("appendonly") for p in written), written
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_a_stop_waits_for_the_longest_job_the_worker_may_run():
    """The worker serves images and videos: a stop waits for the larger of worker.job_timeout_s
    and video.job_timeout_s (4 h by default) + 30 s, not for the image timeout alone."""
    defaults = load_config(None, environ={"SEGD_CONFIG": ""})
    assert worker_stop_timeout_s(defaults) == 4 * 3600 + 30
    short_videos = load_config(
        None, environ={"SEGD_WORKER__JOB_TIMEOUT_S": "1200", "SEGD_VIDEO__JOB_TIMEOUT_S": "600"}
    )
    assert worker_stop_timeout_s(short_videos) == 1230


def test_a_child_that_keeps_dying_is_restarted_ever_more_slowly_and_never_given_up():
    """Exits in quick succession double the delay (1, 2, 4 ... s) up to 60 s, for ever; a child
    that then runs for a while starts again at 1 s."""
    backoff = Backoff(first_s=1, max_s=60, reset_s=300)
    now, delays = 0.0, []
    for _ in range(9):
        delays.append(backoff.next_delay_s(now))
        now += delays[-1] + 5  # restarted, and died again 5 s later
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.next_delay_s(now + 3600) == 1
