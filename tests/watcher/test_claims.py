"""watcher.claims: inbox files move into state/claimed/<job_id>/, once per content."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from common import jobids, state
from watcher import claims

IMAGE = b"\xff\xd8 image bytes"
OTHER = b"\xff\xd8 other image bytes"
MASK = b"\x89PNG mask bytes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def inbox(tmp_path) -> Path:
    path = tmp_path / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def state_dir(tmp_path) -> Path:
    return tmp_path / "state"


def drop(inbox: Path, name: str, data: bytes) -> Path:
    path = inbox / name
    path.write_bytes(data)
    return path


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_image_alone_moves_into_its_job_folder_with_claim_json(inbox, state_dir):
    """claim() moves the image out of the inbox into claimed/<job_id>/ (job id from its sha256,
    no mask and the model version) and records stem, image, mask, version and an int seq."""
    made = claims.claim(state_dir, drop(inbox, "x.jpg", IMAGE), None, "base")

    expected_id = jobids.job_id(sha(IMAGE), None, "base")
    assert made is not None and made.job_id == expected_id
    folder = state_dir / "claimed" / expected_id
    assert visible(inbox) == []
    assert sorted(os.listdir(folder)) == ["claim.json", "x.jpg"]
    assert (folder / "x.jpg").read_bytes() == IMAGE
    recorded = json.loads((folder / "claim.json").read_text())
    assert recorded["job_id"] == expected_id
    assert (recorded["stem"], recorded["image"], recorded["mask"]) == ("x", "x.jpg", None)
    assert recorded["model_version"] == "base"
    assert isinstance(recorded["seq"], int) and recorded["seq"] > 0
    assert state.read_claim(folder) == made
    assert hidden(state_dir / "claimed") == []  # no .incoming-* folder is left behind


def test_an_image_with_its_mask_moves_both_and_the_mask_bytes_are_in_the_job_id(inbox, state_dir):
    """With a mask, both files move and the job id covers the mask's sha256 as well."""
    made = claims.claim(
        state_dir, drop(inbox, "x.jpg", IMAGE), drop(inbox, "x.mask.png", MASK), "base"
    )

    expected_id = jobids.job_id(sha(IMAGE), sha(MASK), "base")
    assert expected_id != jobids.job_id(sha(IMAGE), None, "base")
    assert made is not None and made.job_id == expected_id
    assert (made.stem, made.image, made.mask) == ("x", "x.jpg", "x.mask.png")
    folder = state_dir / "claimed" / expected_id
    assert visible(inbox) == []
    assert sorted(os.listdir(folder)) == ["claim.json", "x.jpg", "x.mask.png"]
    assert (folder / "x.mask.png").read_bytes() == MASK


def test_the_same_bytes_under_another_name_are_a_duplicate_kept_under_duplicates(inbox, state_dir):
    """Without an outbox to look at, a second file with the same bytes returns None, leaves the
    first claim untouched and is kept (not deleted) under claimed/<id>/duplicates/<token>/."""
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base")
    folder = state_dir / "claimed" / first.job_id
    claim_before = (folder / "claim.json").read_text()

    again = claims.claim(state_dir, drop(inbox, "b.jpg", IMAGE), None, "base")

    assert again is None
    assert visible(inbox) == []
    assert visible(state_dir / "claimed") == [first.job_id]
    assert hidden(state_dir / "claimed") == []
    assert (folder / "claim.json").read_text() == claim_before
    assert (folder / "a.jpg").read_bytes() == IMAGE
    (token,) = os.listdir(folder / "duplicates")
    assert re.fullmatch(r"[0-9a-f]{16}", token)
    assert (folder / "duplicates" / token / "b.jpg").read_bytes() == IMAGE


def test_a_duplicate_moves_with_its_job_to_done_on_finish(inbox, state_dir):
    """After state.finish, a duplicate kept while the job was claimed is under done/<id>/."""
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base")
    assert claims.claim(state_dir, drop(inbox, "b.jpg", IMAGE), None, "base") is None

    state.finish(state_dir, first.job_id)

    done = state_dir / "done" / first.job_id
    assert not (state_dir / "claimed" / first.job_id).exists()
    (token,) = os.listdir(done / "duplicates")
    assert (done / "duplicates" / token / "b.jpg").read_bytes() == IMAGE
    assert (done / "a.jpg").read_bytes() == IMAGE


def test_the_same_bytes_after_the_job_is_done_are_kept_under_done_duplicates(inbox, state_dir):
    """Content whose job is already done is a duplicate too: no new claim, the copy goes under
    done/<id>/duplicates/ and claimed/ gets no folder for it."""
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base")
    state.finish(state_dir, first.job_id)

    assert claims.claim(state_dir, drop(inbox, "c.jpg", IMAGE), None, "base") is None

    assert visible(state_dir / "claimed") == []
    done = state_dir / "done" / first.job_id
    (token,) = os.listdir(done / "duplicates")
    assert (done / "duplicates" / token / "c.jpg").read_bytes() == IMAGE
    assert state.read_claim(done) == first


def _publish(outbox: Path, where: str, made: state.Claim) -> None:
    """A published result of claim `made` at `outbox/<where>/` (its manifest only)."""
    (outbox / where).mkdir(parents=True)
    manifest = {"input": {"sha256": made.image_sha256}, "model": {"model_version": "base"}}
    (outbox / where / "manifest.json").write_text(json.dumps(manifest))


def test_a_done_picture_dropped_under_another_name_or_folder_gets_its_own_result(
    inbox, state_dir, tmp_path
):
    """The outbox mirrors the inbox: the bytes of a done job dropped again where its result is
    published (same folder and name) are a duplicate; under another name, in another folder, or
    after its result was deleted, they are claimed again (the same job id, their own folder and
    stem), to be segmented for a result of their own."""
    outbox = tmp_path / "outbox"
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base", outbox=outbox)
    state.finish(state_dir, first.job_id)
    _publish(outbox, "a", first)

    assert claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base", outbox=outbox) is None
    assert visible(state_dir / "claimed") == []

    renamed = claims.claim(state_dir, drop(inbox, "b.jpg", IMAGE), None, "base", outbox=outbox)
    assert renamed is not None and (renamed.job_id, renamed.stem) == (first.job_id, "b")
    assert renamed.seq > first.seq
    assert state.read_claim(state_dir / "claimed" / first.job_id) == renamed
    state.finish(state_dir, renamed.job_id)
    _publish(outbox, "b", renamed)

    (inbox / "trip").mkdir()
    elsewhere = claims.claim(
        state_dir, drop(inbox / "trip", "a.jpg", IMAGE), None, "base", outbox=outbox, folder="trip"
    )
    assert elsewhere is not None and (elsewhere.folder, elsewhere.stem) == ("trip", "a")
    state.finish(state_dir, elsewhere.job_id)

    (outbox / "a" / "manifest.json").unlink()  # a person deleted that result
    (outbox / "a").rmdir()
    again = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base", outbox=outbox)
    assert again is not None and again.stem == "a"


def test_a_copy_for_another_name_waits_while_its_job_runs_then_is_claimed(
    inbox, state_dir, tmp_path
):
    """The same bytes for another folder or name while their job is still claimed: a Twin that
    waits, hashed, in its incoming folder (a copy for the same name is a plain duplicate). Once
    the job is done it is claimed for a result of its own; a watcher restart meanwhile finds it
    again, with its folder."""
    outbox = tmp_path / "outbox"
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base", outbox=outbox)
    (inbox / "trip").mkdir()
    twin = claims.claim(
        state_dir, drop(inbox / "trip", "a.jpg", IMAGE), None, "base", outbox=outbox, folder="trip"
    )
    assert isinstance(twin, claims.Twin) and twin.holder == first.job_id
    assert sorted(os.listdir(twin.incoming)) == ["a.jpg", "claim.json"]
    assert claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base", outbox=outbox) is None
    assert visible(inbox / "trip") == [] and visible(state_dir / "claimed") == [first.job_id]

    # Still running: it waits again (as after a restart, which also finds its folder).
    assert isinstance(claims.settle_twin(state_dir, twin, "base", outbox), claims.Twin)
    (recovered,) = claims.recover_incoming(state_dir, "base", outbox)
    assert isinstance(recovered, claims.Twin) and recovered.claim.folder == "trip"

    state.finish(state_dir, first.job_id)
    made = claims.settle_twin(state_dir, recovered, "base", outbox)
    assert isinstance(made, state.Claim)
    assert (made.job_id, made.folder, made.stem) == (first.job_id, "trip", "a")
    assert state.read_claim(state_dir / "claimed" / first.job_id) == made
    assert hidden(state_dir / "claimed") == []


def test_a_different_model_version_makes_a_new_job_for_the_same_bytes(inbox, state_dir):
    """The same image under another model version is a new claim with another job id."""
    base = claims.claim(state_dir, drop(inbox, "x.jpg", IMAGE), None, "base")
    newer = claims.claim(state_dir, drop(inbox, "x.jpg", IMAGE), None, "v2")

    assert newer is not None
    assert newer.job_id == jobids.job_id(sha(IMAGE), None, "v2") != base.job_id
    assert newer.model_version == "v2"
    assert visible(state_dir / "claimed") == sorted([base.job_id, newer.job_id])


def test_reuse_image_links_a_done_image_into_a_new_claim_and_leaves_it_in_place(inbox, state_dir):
    """reuse_image=True (a mask arriving after its image was done) puts the done image into
    the new claim beside the mask, and the done job keeps its image."""
    first = claims.claim(state_dir, drop(inbox, "x.jpg", IMAGE), None, "base")
    state.finish(state_dir, first.job_id)
    done_image = state_dir / "done" / first.job_id / "x.jpg"

    made = claims.claim(
        state_dir, done_image, drop(inbox, "x.mask.png", MASK), "base", reuse_image=True
    )

    assert made is not None and made.job_id == jobids.job_id(sha(IMAGE), sha(MASK), "base")
    assert (made.image, made.mask) == ("x.jpg", "x.mask.png")
    folder = state_dir / "claimed" / made.job_id
    assert (folder / "x.jpg").read_bytes() == IMAGE
    assert (folder / "x.mask.png").read_bytes() == MASK
    assert done_image.read_bytes() == IMAGE
    assert visible(inbox) == []


def make_incoming(state_dir: Path, files: dict[str, bytes], token: str = "00ff00ff00ff00ff"):
    incoming = state_dir / "claimed" / f".incoming-{token}"
    incoming.mkdir(parents=True)
    for name, data in files.items():
        (incoming / name).write_bytes(data)
    return incoming


def test_recover_incoming_settles_a_half_done_image_claim(state_dir):
    """An .incoming-* folder left by a crash with one image becomes claimed/<job_id>/."""
    incoming = make_incoming(state_dir, {"x.jpg": IMAGE})

    (made,) = claims.recover_incoming(state_dir, "base")

    assert made.job_id == jobids.job_id(sha(IMAGE), None, "base")
    assert (made.stem, made.image, made.mask) == ("x", "x.jpg", None)
    assert not incoming.exists()
    folder = state_dir / "claimed" / made.job_id
    assert (folder / "x.jpg").read_bytes() == IMAGE
    assert state.read_claim(folder) == made


def test_recover_incoming_settles_a_half_done_image_and_mask_claim(state_dir):
    """An .incoming-* folder with an image and x.mask.png becomes a claim with the mask."""
    make_incoming(state_dir, {"x.jpg": IMAGE, "x.mask.png": MASK})

    (made,) = claims.recover_incoming(state_dir, "v7")

    assert made.job_id == jobids.job_id(sha(IMAGE), sha(MASK), "v7")
    assert (made.image, made.mask, made.model_version) == ("x.jpg", "x.mask.png", "v7")
    folder = state_dir / "claimed" / made.job_id
    assert sorted(os.listdir(folder)) == ["claim.json", "x.jpg", "x.mask.png"]
    assert hidden(state_dir / "claimed") == []


def test_recover_incoming_files_a_half_done_duplicate_under_the_existing_job(inbox, state_dir):
    """A half-done claim of content that already has a job is kept under its duplicates/ and
    is not returned as a new claim."""
    first = claims.claim(state_dir, drop(inbox, "a.jpg", IMAGE), None, "base")
    make_incoming(state_dir, {"b.jpg": IMAGE}, token="1234567890abcdef")

    assert claims.recover_incoming(state_dir, "base") == []

    kept = state_dir / "claimed" / first.job_id / "duplicates" / "1234567890abcdef" / "b.jpg"
    assert kept.read_bytes() == IMAGE
    assert hidden(state_dir / "claimed") == []


def test_recover_incoming_removes_an_empty_incoming_folder_and_handles_no_state(state_dir):
    """With no claimed/ folder there is nothing to do; an empty .incoming-* (a crash right after
    mkdir) is removed."""
    assert claims.recover_incoming(state_dir, "base") == []
    incoming = make_incoming(state_dir, {})

    assert claims.recover_incoming(state_dir, "base") == []
    assert not incoming.exists()


def test_recover_incoming_ignores_a_leftover_claim_json_temp_file(state_dir):
    """A crash inside write_claim leaves .claim.json.tmp-<hex>; recovery still settles the image."""
    make_incoming(state_dir, {"x.jpg": IMAGE, ".claim.json.tmp-1a2b3c4d": b'{"job_id": '})

    recovered = claims.recover_incoming(state_dir, "base")

    assert [c.job_id for c in recovered] == [jobids.job_id(sha(IMAGE), None, "base")]


def test_recover_incoming_deletes_only_a_truly_empty_folder(state_dir):
    """An incoming folder with no input but a hidden subfolder (with a file in it) is left in
    place, untouched; one holding only segd's own leftovers (a temp file) is removed."""
    keep = make_incoming(state_dir, {})
    (keep / ".frames").mkdir()
    (keep / ".frames" / "000.jpg").write_bytes(IMAGE)
    leftovers = make_incoming(state_dir, {".claim.json.tmp-1a2b3c4d": b"{"}, token="ab" * 8)

    assert claims.recover_incoming(state_dir, "base") == []

    assert (keep / ".frames" / "000.jpg").read_bytes() == IMAGE
    assert not leftovers.exists()
