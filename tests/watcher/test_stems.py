"""watcher.stems: the newest claim of each stem, found without reading every claim.json."""

from __future__ import annotations

from pathlib import Path

from common import state
from watcher import claims
from watcher.stems import StemIndex


def _claim(inbox: Path, state_dir: Path, name: str, data: bytes) -> state.Claim:
    (inbox / name).write_bytes(data)
    made = claims.claim(state_dir, inbox / name, None, "base")
    assert made is not None
    return made


def test_the_index_finds_the_newest_claim_of_a_stem_in_claimed_or_done(tmp_path):
    """Built once from the claims on disk, then fed by new claims: the newest image of a stem,
    whether its job is still claimed or done; a stem never claimed costs no further scan."""
    inbox, state_dir = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    older = _claim(inbox, state_dir, "x.jpg", b"first")
    state.finish(state_dir, older.job_id)
    index = StemIndex(state_dir)
    assert index.latest("x") == state_dir / "done" / older.job_id / "x.jpg"
    newer = _claim(inbox, state_dir, "x.png", b"second")
    index.add(newer)
    assert index.latest("x") == state_dir / "claimed" / newer.job_id / "x.png"
    state.finish(state_dir, newer.job_id)
    assert index.latest("x") == state_dir / "done" / newer.job_id / "x.png"
    for _ in range(100):  # a mask waiting for its image asks on every rescan
        assert index.latest("lonely") is None
    assert index.builds == 1


def test_a_claim_that_moved_is_found_again_or_forgotten(tmp_path):
    """A claim a worker re-keyed (renamed) is found by one rebuild; one that failed is forgotten
    after one rebuild, so later lookups scan nothing."""
    inbox, state_dir = tmp_path / "inbox", tmp_path / "state"
    inbox.mkdir()
    made = _claim(inbox, state_dir, "y.jpg", b"y")
    index = StemIndex(state_dir)
    index.add(made)
    index.build()
    moved = state_dir / "claimed" / ("f" * 32)
    (state_dir / "claimed" / made.job_id).rename(moved)
    assert index.latest("y") == moved / "y.jpg" and index.builds == 2
    state.fail(state_dir, "f" * 32, "broken")
    assert index.latest("y") is None and index.builds == 3
    assert index.latest("y") is None and index.builds == 3


def test_stems_of_different_inbox_folders_are_kept_apart(tmp_path):
    """`visit/x.jpg` and `x.jpg` share a stem but not a folder: a mask in visit/ finds only the
    image of visit/ (keys are (folder, stem))."""
    inbox, state_dir = tmp_path / "inbox", tmp_path / "state"
    (inbox / "visit").mkdir(parents=True)
    top = _claim(inbox, state_dir, "x.jpg", b"top")
    (inbox / "visit" / "x.jpg").write_bytes(b"in visit")
    nested = claims.claim(state_dir, inbox / "visit" / "x.jpg", None, "base", folder="visit")
    assert nested is not None and nested.seq > top.seq
    index = StemIndex(state_dir)
    assert index.latest("x") == state_dir / "claimed" / top.job_id / "x.jpg"
    assert index.latest("x", "visit") == state_dir / "claimed" / nested.job_id / "x.jpg"
    assert index.latest("x", "other") is None


def test_a_copy_segmented_again_for_another_name_is_found_in_its_jobs_duplicates(tmp_path):
    """The same bytes claimed again for another name after their job was done end, once done,
    under that job's duplicates/: the index finds that copy's image (for a mask that comes
    later), both when fed by the claim and after a rebuild (a watcher restart)."""
    inbox, state_dir, outbox = tmp_path / "inbox", tmp_path / "state", tmp_path / "outbox"
    inbox.mkdir()
    first = _claim(inbox, state_dir, "a.jpg", b"same")
    state.finish(state_dir, first.job_id)
    (inbox / "b.jpg").write_bytes(b"same")
    again = claims.claim(state_dir, inbox / "b.jpg", None, "base", outbox=outbox)
    assert isinstance(again, state.Claim) and again.job_id == first.job_id
    index = StemIndex(state_dir)
    index.add(again)
    assert index.latest("b") == state_dir / "claimed" / first.job_id / "b.jpg"
    landed = state.finish(state_dir, again.job_id)
    assert landed.parent.name == state.DUPLICATES
    assert index.latest("b") == landed / "b.jpg"
    assert StemIndex(state_dir).latest("b") == landed / "b.jpg"
    assert StemIndex(state_dir).latest("a") == state_dir / "done" / first.job_id / "a.jpg"
