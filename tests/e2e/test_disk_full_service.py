"""A full outbox end to end: the outbox on a small tmpfs (root mounts one; skipped where it
cannot), a real redis-server, `segd watch`, `segd worker`, a random-weights SAM2.1 tiny."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.service_helpers import Service, picture

pytestmark = pytest.mark.slow
FLOOR = 256 * 1024


@pytest.fixture
def make_site(tmp_path, tiny_checkpoint):
    """A site whose outbox is a 2 MB tmpfs (skipped where none can be mounted)."""
    made: list[Service] = []

    def make(floor: int) -> Service:
        site = Service(
            tmp_path / f"site{len(made)}",
            checkpoint=tiny_checkpoint,
            SEGD_WORKER__MIN_FREE_BYTES=str(floor),
            SEGD_WORKER__TRANSIENT_BACKOFF_MAX_S="2",
        )
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(site.outbox)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs on the outbox: {mounted.stderr.strip()}")
        made.append(site)
        site.start_redis()
        return site

    yield make
    for site in made:
        site.close()
        subprocess.run(["umount", str(site.outbox)], check=False)


@pytest.fixture
def full_site(make_site):
    return make_site(FLOOR)


def _fill(outbox, leave: int):
    """A hidden filler file that leaves `leave` bytes free on the outbox's file system."""
    filler = outbox / ".filler"
    info = os.statvfs(outbox)
    filler.write_bytes(b"\0" * (info.f_bavail * info.f_frsize - leave))
    return filler


def test_a_full_outbox_pauses_the_worker_fails_nothing_and_finishes_once_space_is_freed(full_site):
    """Below worker.min_free_bytes the worker takes no job and `segd status --check` is CRITICAL
    with the free bytes; no input fails; once space is freed every input gets its result with
    nobody touching the service."""
    site = full_site
    filler = _fill(site.outbox, FLOOR // 2)
    site.start("watch")
    site.start("worker")
    for i in range(4):
        (site.inbox / f"img{i}.jpg").write_bytes(picture(i, quality=95))
    site.wait_for(lambda: "pausing (no job is taken)" in site.log("worker"), what="the pause")
    site.wait_for(lambda: len(site.folders("claimed")) == 4, what="four claims")
    check = site.segd("status", "--check")
    assert check.returncode == 1
    assert f"CRITICAL low disk space: outbox {site.outbox} has " in check.stdout
    assert f"bytes free, below worker.min_free_bytes = {FLOOR}" in check.stdout
    assert site.results() == {} and site.folders("failed") == []

    filler.unlink()
    site.wait_for(lambda: len(site.results()) == 4, timeout=180, what="four results")
    assert site.folders("failed") == [] and site.folders("claimed") == []
    assert "taking jobs again" in site.log("worker")


def test_no_space_left_in_the_middle_of_writing_is_retried_not_failed(make_site):
    """Without a floor (worker.min_free_bytes = 0) the worker starts writing and hits ENOSPC (a
    noisy 480x640 picture's overlay alone is larger than the 48 KB left): the job is retried with
    back-off as transient trouble, its input stays claimed, nothing half-written is published,
    and once space is freed the result appears with nobody touching the service."""
    site = make_site(0)
    filler = _fill(site.outbox, 48 * 1024)
    site.start("watch")
    site.start("worker")
    (site.inbox / "noise.jpg").write_bytes(picture(7, (480, 640), quality=95))
    site.wait_for(
        lambda: "not the input's fault: retried with back-off" in site.log("worker"),
        timeout=180,
        what="a transient retry",
    )
    assert "no space left on the device" in site.log("worker")
    assert site.folders("failed") == [] and len(site.folders("claimed")) == 1
    assert site.results() == {}

    filler.unlink()
    site.wait_for(lambda: "noise" in site.results(), timeout=180, what="the result")
    assert site.folders("failed") == [] and site.folders("claimed") == []
