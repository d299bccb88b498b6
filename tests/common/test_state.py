"""common.state: the claimed/done/failed folders, the source of truth for every input."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
from pathlib import Path

import pytest

from common import state

JOB = "0123456789abcdef0123456789abcdef"
FAILED_STAMP = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")
DUPLICATE_STAMP = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")


def make_claim(state_dir: Path, job_id: str = JOB, data: bytes = b"image") -> Path:
    folder = state_dir / "claimed" / job_id
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(data)
    return folder


def parse_time(text: str) -> dt.datetime:
    stamp = dt.datetime.fromisoformat(text)
    assert stamp.tzinfo is not None
    return stamp


@pytest.mark.parametrize("bad", ["../etc", "", "A" * 32, "a" * 31, "a" * 33, "g" * 32, None])
def test_folder_rejects_anything_but_32_lowercase_hex_digits(tmp_path, bad):
    """folder() refuses ids that are not 32 lowercase hex digits (job arguments are untrusted),
    naming the id."""
    with pytest.raises(ValueError, match=re.escape(f"{bad!r} is not a segd job id")):
        state.folder(tmp_path, state.CLAIMED, bad)


def test_folder_joins_a_valid_id_under_its_kind(tmp_path):
    """A valid id gives <state>/<kind>/<id>, for a str or PathLike state folder."""
    assert state.folder(tmp_path, state.DONE, JOB) == tmp_path / "done" / JOB
    assert state.folder(str(tmp_path), state.FAILED, JOB) == tmp_path / "failed" / JOB


def test_folder_rejects_a_valid_id_with_a_trailing_newline(tmp_path):
    """An id followed by a newline is not a job id."""
    with pytest.raises(ValueError, match="is not a segd job id"):
        state.folder(tmp_path, state.CLAIMED, JOB + "\n")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "", "..", "a\x00b", "a\x1bb.jpg"])
def test_safe_member_rejects_paths_and_hidden_names(tmp_path, bad):
    """safe_member refuses separators, parent references, hidden names, NUL and control characters."""
    with pytest.raises(ValueError, match=re.escape(f"{bad!r} is not a plain file name")):
        state.safe_member(tmp_path, bad)


def test_safe_member_accepts_a_plain_name_and_passes_none_through(tmp_path):
    """A plain file name, in any language and with punctuation, is joined to the folder; None (no
    mask) stays None."""
    assert state.safe_member(tmp_path, "x.jpg") == tmp_path / "x.jpg"
    for name in ("样品 01.jpg", "it's here.jpg", "a&b (copy).jpg", "-x.jpg"):
        assert state.safe_member(tmp_path, name) == tmp_path / name
    assert state.safe_member(tmp_path, None) is None


def test_safe_member_rejects_a_name_with_a_trailing_newline(tmp_path):
    """A name ending in a newline is not a plain file name."""
    with pytest.raises(ValueError, match="is not a plain file name"):
        state.safe_member(tmp_path, "x.jpg\n")


def test_write_claim_and_read_claim_round_trip_without_leaving_temp_files(tmp_path):
    """A Claim written to a folder reads back equal, and only claim.json is left there."""
    claim = state.Claim(
        job_id=JOB,
        stem="x",
        image="x.jpg",
        mask=None,
        model_version="base",
        claimed_at=state.now_iso(),
        seq=123,
    )
    state.write_claim(tmp_path, claim)
    assert os.listdir(tmp_path) == ["claim.json"]
    assert state.read_claim(tmp_path) == claim


def test_finish_moves_the_claim_folder_to_done(tmp_path):
    """finish() renames claimed/<id> to done/<id> with its files, and returns the new place."""
    make_claim(tmp_path)

    target = state.finish(tmp_path, JOB)

    assert target == tmp_path / "done" / JOB
    assert not (tmp_path / "claimed" / JOB).exists()
    assert (target / "x.jpg").read_bytes() == b"image"


def test_finish_without_a_claim_raises_file_not_found(tmp_path):
    """Finishing an id that has no claim folder is an error, not a silent no-op."""
    with pytest.raises(FileNotFoundError):
        state.finish(tmp_path, JOB)


def test_finishing_into_an_existing_done_folder_keeps_both(tmp_path):
    """When done/<id> exists already, the second claim goes under done/<id>/duplicates/<stamp>
    and the first result's files stay as they are."""
    make_claim(tmp_path, data=b"first")
    state.finish(tmp_path, JOB)
    make_claim(tmp_path, data=b"second")

    landed = state.finish(tmp_path, JOB)

    target = tmp_path / "done" / JOB
    assert landed.parent == target / "duplicates"  # finish returns where the claim went
    assert (target / "x.jpg").read_bytes() == b"first"
    (stamp,) = os.listdir(target / "duplicates")
    assert DUPLICATE_STAMP.fullmatch(stamp)
    assert (target / "duplicates" / stamp / "x.jpg").read_bytes() == b"second"
    assert not (tmp_path / "claimed" / JOB).exists()


def test_fail_moves_the_claim_to_failed_with_error_json(tmp_path):
    """fail() renames claimed/<id> to failed/<id> and writes error.json with the job id, the
    reason, the detail and a timezone-aware failed_at; read_error returns it."""
    make_claim(tmp_path)

    target = state.fail(tmp_path, JOB, "not an image", detail="Traceback ...")

    assert target == tmp_path / "failed" / JOB
    assert not (tmp_path / "claimed" / JOB).exists()
    assert (target / "x.jpg").read_bytes() == b"image"
    error = json.loads((target / "error.json").read_text())
    assert set(error) == {"job_id", "reason", "detail", "failed_at"}
    assert (error["job_id"], error["reason"], error["detail"]) == (
        JOB,
        "not an image",
        "Traceback ...",
    )
    parse_time(error["failed_at"])
    assert state.read_error(target) == error


def test_fail_without_detail_records_a_null_detail(tmp_path):
    """The detail is optional: error.json holds null for it."""
    make_claim(tmp_path)
    error = state.read_error(state.fail(tmp_path, JOB, "truncated file"))
    assert error["reason"] == "truncated file" and error["detail"] is None


def test_failing_the_same_job_id_twice_keeps_both_error_records(tmp_path):
    """Each failed claim keeps its own reason: the first in failed/<id>/, the second in its
    duplicates folder."""
    make_claim(tmp_path, data=b"first")
    state.fail(tmp_path, JOB, "first reason")
    make_claim(tmp_path, data=b"second")
    state.fail(tmp_path, JOB, "second reason")

    target = tmp_path / "failed" / JOB
    (stamp,) = os.listdir(target / "duplicates")
    assert state.read_error(target)["reason"] == "first reason"
    assert state.read_error(target / "duplicates" / stamp)["reason"] == "second reason"


def test_fail_entry_moves_a_fifo_without_opening_it(tmp_path):
    """A FIFO in the inbox moves, still a FIFO, to failed/<stamp>/ with error.json naming it."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.mkfifo(inbox / "x.jpg")

    target = state.fail_entry(tmp_path / "state", inbox / "x.jpg", "not a regular file")

    assert target.parent == tmp_path / "state" / "failed"
    assert FAILED_STAMP.fullmatch(target.name)
    assert os.listdir(inbox) == []
    assert stat.S_ISFIFO(os.lstat(target / "x.jpg").st_mode)
    error = state.read_error(target)
    assert (error["name"], error["reason"]) == ("x.jpg", "not a regular file")
    parse_time(error["failed_at"])


def test_fail_entry_moves_a_symlink_itself_and_leaves_its_target_alone(tmp_path):
    """A symlink is moved as a link (never followed): failed/ holds a link to the same target,
    and the file outside the inbox is untouched."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"do not touch")
    os.symlink(outside, inbox / "x.jpg")

    target = state.fail_entry(tmp_path / "state", inbox / "x.jpg", "is a symbolic link")

    moved = target / "x.jpg"
    assert moved.is_symlink()
    assert os.readlink(moved) == str(outside)
    assert outside.read_bytes() == b"do not touch"
    assert os.listdir(inbox) == []
    assert state.read_error(target)["name"] == "x.jpg"


def test_fail_entry_stores_an_unsafe_name_as_input_and_records_the_original(tmp_path):
    """A hidden name and a non-UTF-8 name are stored as 'input'; error.json keeps the original
    name, with undecodable bytes backslash-escaped."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / ".DS_Store").write_bytes(b"finder")
    fd = os.open(os.path.join(os.fsencode(inbox), b"bad\xff.jpg"), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    bad_name = next(n for n in os.listdir(str(inbox)) if n.startswith("bad"))

    hidden = state.fail_entry(tmp_path / "state", inbox / ".DS_Store", "hidden")
    undecodable = state.fail_entry(tmp_path / "state", inbox / bad_name, "not valid UTF-8")

    assert sorted(os.listdir(hidden)) == ["error.json", "input"]
    assert (hidden / "input").read_bytes() == b"finder"
    assert state.read_error(hidden)["name"] == ".DS_Store"
    assert sorted(os.listdir(undecodable)) == ["error.json", "input"]
    assert state.read_error(undecodable)["name"] == "bad\\xff.jpg"
    assert state.read_error(undecodable)["reason"] == "not valid UTF-8"
    assert os.listdir(inbox) == []
    assert hidden != undecodable


def test_fail_entry_keeps_the_bytes_of_an_inbox_file_named_error_json(tmp_path):
    """A refused file that happens to be called error.json is kept, not overwritten."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "error.json").write_bytes(b'{"mine": true}')

    target = state.fail_entry(tmp_path / "state", inbox / "error.json", "unknown file type")

    kept = [p.read_bytes() for p in target.iterdir()]
    assert b'{"mine": true}' in kept


def test_read_error_without_a_readable_error_json_says_unknown(tmp_path):
    """A failed folder without error.json, or with a corrupt one, reads as an unknown reason."""
    assert "unknown" in state.read_error(tmp_path)["reason"]
    (tmp_path / "error.json").write_text("{not json")
    assert "unknown" in state.read_error(tmp_path)["reason"]
