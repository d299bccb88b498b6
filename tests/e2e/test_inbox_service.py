"""The inbox as people use it, end to end (a real redis-server, `segd watch`, `segd worker`, a
random-weights SAM2.1 tiny): everyday names, folders as batches, frame folders as videos, no
result replaced by another picture, a failed input retried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import state
from tests.service_helpers import picture, sha, write_slowly
from tests.worker.video.test_frames import moving_square_frames

pytestmark = pytest.mark.slow

EVERYDAY = ["样品 01.jpg", "café crème.jpg", "photo#12.jpg", "it's here.jpg", "a&b (copy).jpg"]


def test_everyday_names_and_a_nested_file_each_get_a_result_under_their_own_name(service):
    """样品 01.jpg, café crème.jpg, photo#12.jpg, it's here.jpg, a&b (copy).jpg, Ünïcödé.png and
    a/b/x.jpg are segmented; each result folder carries the input's own name (a/b/x.jpg under
    outbox/a/b/x/); nothing fails."""
    service.start("watch")
    service.start("worker")
    files = {name: picture(i) for i, name in enumerate(EVERYDAY)}
    files["Ünïcödé.png"] = picture(9, fmt="PNG")
    for name, data in files.items():
        (service.inbox / name).write_bytes(data)
    (service.inbox / "a" / "b").mkdir(parents=True)
    nested = picture(20)
    (service.inbox / "a" / "b" / "x.jpg").write_bytes(nested)
    service.wait_for(lambda: len(service.results()) == 7, timeout=240, what="7 results")

    results = service.results()
    expected = {Path(n).stem: d for n, d in files.items()} | {"a/b/x": nested}
    assert sorted(results) == sorted(expected)
    for where, data in expected.items():
        assert results[where]["input"]["sha256"] == sha(data), where
        assert results[where]["published_as"] == where
    assert results["a/b/x"]["input"]["folder"] == "a/b"
    assert service.folders("failed") == []
    status = service.segd("status")
    assert status.returncode == 0, status.stderr


def test_a_folder_of_photos_copied_file_by_file_is_a_batch_mirrored_in_the_outbox(service):
    """A folder of three photos of different sizes, written slowly one after the other, gives
    three results under outbox/<folder>/, each from the complete file, the first claimed before
    the last is written; a photo added to the folder later is noticed too, with its mask."""
    service.start("watch")
    service.start("worker")
    folder = service.inbox / "visit 2026-12-01"
    folder.mkdir()
    sizes = [(96, 128), (120, 80), (64, 64)]
    photos = {f"IMG_{i:04d}.jpg": picture(30 + i, size) for i, size in enumerate(sizes)}
    claimed_before_last = []
    for i, (name, data) in enumerate(photos.items()):
        if i == len(photos) - 1:  # by now the first photo is claimed: each file on its own
            service.wait_for(
                lambda: not (folder / "IMG_0000.jpg").exists(), what="the first photo's claim"
            )
            claimed_before_last.append(True)
        write_slowly(folder / name, data)
    service.wait_for(lambda: len(service.results()) == 3, timeout=240, what="three results")
    results = service.results()
    assert sorted(results) == sorted(f"visit 2026-12-01/{Path(n).stem}" for n in photos)
    for name, data in photos.items():
        manifest = results[f"visit 2026-12-01/{Path(name).stem}"]
        assert manifest["input"]["sha256"] == sha(data)  # never read half-written
        assert (manifest["input"]["height"], manifest["input"]["width"]) == sizes[int(name[4:8])]
    assert claimed_before_last == [True]

    later = picture(40)
    region = np.zeros((96, 128), np.uint8)
    region[:, :64] = 255
    Image.fromarray(region).save(folder / "later.mask.png")
    (folder / "later.jpg").write_bytes(later)
    service.wait_for(lambda: len(service.results()) == 4, timeout=120, what="the later photo")
    manifest = service.results()["visit 2026-12-01/later"]
    assert manifest["input"]["sha256"] == sha(later)
    assert manifest["mask"]["name"] == "later.mask.png"
    assert service.folders("failed") == []
    assert folder.is_dir() and list(folder.iterdir()) == []  # the folder stays, for more


def test_a_folder_of_12_frames_named_by_integers_is_one_video(service):
    """00000.jpg ... 00011.jpg in one folder: one video result over the 12 frames, not 12
    image results."""
    service.start("watch")
    service.start("worker")
    scratch = service.root / "scratch" / "walk"
    scratch.mkdir(parents=True)
    for i, frame in enumerate(moving_square_frames(12)):
        Image.fromarray(frame).save(scratch / f"{i:05d}.jpg", quality=95)
    shutil.move(scratch, service.inbox / "walk")
    service.wait_for(lambda: "walk" in service.results(), timeout=240, what="the video result")
    manifest = service.results()["walk"]
    assert manifest["input"]["kind"] == "frames" and manifest["input"]["frames"] == 12
    assert len(list((service.outbox / "walk" / "index").iterdir())) == 12
    assert list(service.results()) == ["walk"]


def test_pictures_sharing_a_stem_keep_their_results_and_a_new_mask_replaces_its_own(service):
    """IMG_0001.jpg, then a different IMG_0001.png: both results are kept (IMG_0001/ and
    IMG_0001~2/, the manifest says so); a mask for the png then replaces the png's own result
    and leaves the jpg's alone."""
    service.start("watch")
    service.start("worker")
    jpg, png = picture(50), picture(51, fmt="PNG")
    (service.inbox / "IMG_0001.jpg").write_bytes(jpg)
    service.wait_for(lambda: "IMG_0001" in service.results(), what="the jpg's result")
    (service.inbox / "IMG_0001.png").write_bytes(png)
    service.wait_for(lambda: "IMG_0001~2" in service.results(), what="the png's result")
    results = service.results()
    assert results["IMG_0001"]["input"]["sha256"] == sha(jpg)
    assert results["IMG_0001~2"]["input"]["sha256"] == sha(png)
    assert results["IMG_0001~2"]["published_as"] == "IMG_0001~2"
    assert results["IMG_0001~2"]["name_taken_by"] == [sha(jpg)]
    assert "publishing as IMG_0001~2" in service.log("worker")

    region = np.zeros((96, 128), np.uint8)
    region[:48] = 255
    Image.fromarray(region).save(service.inbox / "IMG_0001.mask.png")
    service.wait_for(
        lambda: (
            (service.results()["IMG_0001~2"].get("mask") or {}).get("name") == "IMG_0001.mask.png"
        ),
        what="the png's result with its mask",
    )
    results = service.results()
    assert sorted(results) == ["IMG_0001", "IMG_0001~2"]
    assert results["IMG_0001~2"]["input"]["sha256"] == sha(png)
    assert (
        results["IMG_0001"]["input"]["sha256"] == sha(jpg) and results["IMG_0001"]["mask"] is None
    )


def test_one_picture_under_other_names_and_folders_gets_a_result_under_each(service):
    """The outbox mirrors the inbox: one picture dropped at once as a.jpg, b.jpg and trip/a.jpg
    gives outbox/a/, outbox/b/ and outbox/trip/a/ (one job id: the copies after the first wait
    for its job, counted as claimed by `segd status`, then are segmented again); a mask dropped later for trip/a.jpg pairs with that
    copy; a.jpg dropped again where its result is is a duplicate and changes nothing."""
    service.start("watch")
    data = picture(70)
    (service.inbox / "trip").mkdir()
    for where in ("a.jpg", "b.jpg", "trip/a.jpg"):
        (service.inbox / where).write_bytes(data)
    # No worker yet: the first copy's job stays claimed and the other two wait for it.
    service.wait_for(
        lambda: service.log("watch").count("then gets a result of its own") == 2,
        what="two copies waiting",
    )
    assert len(service.folders("claimed")) == 1 and list(service.inbox.rglob("*.jpg")) == []
    status = json.loads(service.segd("status", "--json").stdout)
    assert status["waiting"]["claimed"] == 3
    service.start("worker")
    service.wait_for(lambda: len(service.results()) == 3, timeout=240, what="three results")
    results = service.results()
    assert sorted(results) == ["a", "b", "trip/a"]
    for where, manifest in results.items():
        assert manifest["input"]["sha256"] == sha(data) and manifest["published_as"] == where
        assert manifest["job_id"] == results["a"]["job_id"]
    assert results["trip/a"]["input"]["folder"] == "trip"

    region = np.zeros((96, 128), np.uint8)
    region[:48] = 255
    Image.fromarray(region).save(service.inbox / "trip" / "a.mask.png")
    service.wait_for(
        lambda: (service.results()["trip/a"].get("mask") or {}).get("name") == "a.mask.png",
        what="trip/a segmented again with its mask",
    )
    (service.inbox / "a.jpg").write_bytes(data)
    service.wait_for(
        lambda: "not segmented again" in service.log("watch"), what="the re-drop filed"
    )
    after = service.results()
    assert sorted(after) == ["a", "b", "trip/a"]
    assert after["a"] == results["a"] and after["b"] == results["b"]
    assert service.folders("failed") == [] and service.folders("claimed") == []


def test_segd_retry_sends_an_input_an_older_segd_refused_through_again(service):
    """An input in state/failed/ that an older segd refused for its name (`café crème.jpg`) goes
    back into the inbox with `segd retry NAME` and gets its result; asking again is refused with
    the reason, and so is a refused symlink."""
    service.start("watch")
    service.start("worker")
    data = picture(60)
    entry = service.state / "failed" / "20261201T000000-0123abcd"
    entry.mkdir(parents=True)
    (entry / "café crème.jpg").write_bytes(data)
    state.replace_json(
        entry / "error.json",
        {"name": "café crème.jpg", "reason": "the file name has characters segd does not accept"},
    )
    link_entry = service.state / "failed" / "20261201T000001-0123abce"
    link_entry.mkdir()
    (link_entry / "link.jpg").symlink_to("/etc/passwd")
    state.replace_json(
        link_entry / "error.json",
        {"name": "link.jpg", "stored_as": "link.jpg", "reason": "is a symbolic link"},
    )

    first = service.segd("retry", "café crème.jpg", "link.jpg")
    assert first.returncode == 1, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("retrying café crème.jpg as job ")
    assert lines[1] == "refused link.jpg: is a symbolic link; drop the file itself"
    service.wait_for(lambda: "café crème" in service.results(), what="the retried result")
    assert service.results()["café crème"]["input"]["sha256"] == sha(data)
    again = service.segd("retry", "café crème.jpg")
    assert again.stdout.strip() == (
        "refused café crème.jpg: nothing left to retry: no failed input has this name or id"
    )
    assert not entry.exists()
    assert json.loads((link_entry / "error.json").read_text())["name"] == "link.jpg"
