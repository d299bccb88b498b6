"""watcher.inbox: what an inbox entry is, decided from its name and os.lstat alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watcher.inbox import Kind, classify
from worker.inputs import IMAGE_SUFFIXES


def make_file(folder: Path, name: str, data: bytes = b"bytes") -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def classify_entry(folder: Path, name: str) -> tuple[Kind, str]:
    return classify(name, os.lstat(folder / name))


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_suffix_in_any_case_is_an_image(tmp_path, suffix):
    """x<suffix> and X<SUFFIX> are both images (the suffix is matched case-insensitively)."""
    for name in (f"x{suffix}", f"X{suffix.upper()}"):
        make_file(tmp_path, name)
        assert classify_entry(tmp_path, name) == (Kind.IMAGE, "")


def test_a_region_mask_is_a_mask_in_any_case(tmp_path):
    """x.mask.png (and X.MASK.PNG) is a region mask, not an image."""
    for name in ("x.mask.png", "X.MASK.PNG"):
        make_file(tmp_path, name)
        assert classify_entry(tmp_path, name) == (Kind.MASK, "")


@pytest.mark.parametrize("name", [".x.part", "x.part", "x.jpg.part", "X.JPG.PART"])
def test_part_files_hidden_or_not_are_temporary(tmp_path, name):
    """A `.part` name (hidden or not, any case) is a writer's temp file: wait, with no reason."""
    make_file(tmp_path, name)
    assert classify_entry(tmp_path, name) == (Kind.TEMP, "")


def test_a_hidden_file_or_folder_is_left_alone_as_a_writers_temp_file(tmp_path):
    """`.DS_Store`, rsync's `.x.jpg.AbC123` and a hidden folder are temp names: left alone (the
    watcher moves them to failed/ only once untouched for watcher.stale_part_s)."""
    make_file(tmp_path, ".DS_Store")
    make_file(tmp_path, ".x.jpg.AbC123")
    (tmp_path / ".git").mkdir()
    for name in (".DS_Store", ".x.jpg.AbC123", ".git"):
        assert classify_entry(tmp_path, name) == (Kind.TEMP, "")


@pytest.mark.parametrize("name", ["x.jpg", "x.part", ".x.part", "x.mask.png", "dangling.jpg"])
def test_a_symlink_is_refused_before_any_other_rule(tmp_path, name):
    """A symbolic link is refused as one, even when its name would make it a temp file or an
    image, and whether or not its target exists (the check comes before the .part rule)."""
    target = make_file(tmp_path, "target.bin") if name != "dangling.jpg" else tmp_path / "nowhere"
    os.symlink(target, tmp_path / name)
    kind, reason = classify_entry(tmp_path, name)
    assert kind is Kind.REFUSED
    assert reason == "is a symbolic link; drop the file itself"


def test_a_fifo_is_refused_as_not_a_regular_file(tmp_path):
    """A FIFO named like an image is refused: it is not a regular file."""
    os.mkfifo(tmp_path / "x.jpg")
    kind, reason = classify_entry(tmp_path, "x.jpg")
    assert kind is Kind.REFUSED
    assert reason == "not a regular file (a FIFO, socket or device)"


def test_a_plainly_named_folder_is_a_folder_of_frames(tmp_path):
    """A folder with a plain name is a video given as frames (claimed once its contents settle)."""
    (tmp_path / "clip 01").mkdir()
    assert classify_entry(tmp_path, "clip 01") == (Kind.FRAMES, "")


@pytest.mark.parametrize("name", ["x.jpg", "x.mp4"])
def test_a_folder_named_like_a_file_is_refused(tmp_path, name):
    """A folder named like an image or a video is refused: frame folders need a plain name."""
    (tmp_path / name).mkdir()
    kind, reason = classify_entry(tmp_path, name)
    assert kind is Kind.REFUSED
    assert reason == "a folder named like a file; a folder of frames needs a plain name"


def test_a_hard_linked_file_is_refused_under_both_names(tmp_path):
    """A file with two links (st_nlink 2) is refused under either name as a hard link."""
    original = make_file(tmp_path, "a.jpg")
    os.link(original, tmp_path / "b.jpg")
    assert os.lstat(original).st_nlink == 2
    for name in ("a.jpg", "b.jpg"):
        kind, reason = classify_entry(tmp_path, name)
        assert kind is Kind.REFUSED
        assert "is a hard link to a file elsewhere" in reason


@pytest.mark.parametrize("name", ["x.mp4", "X.MOV", "clip.avi", "clip.mkv"])
def test_a_video_file_in_any_case_is_a_video(tmp_path, name):
    """x.mp4 / .mov / .avi / .mkv (any case) are videos."""
    make_file(tmp_path, name)
    assert classify_entry(tmp_path, name) == (Kind.VIDEO, "")


@pytest.mark.parametrize("name", ["x.txt", "x", "x.gif", "x.heic", "x.jpg.zip"])
def test_an_unknown_file_type_is_refused_naming_what_is_accepted(tmp_path, name):
    """Anything else is refused as an unknown file type; the reason lists the accepted suffixes
    and the mask naming rule."""
    make_file(tmp_path, name)
    kind, reason = classify_entry(tmp_path, name)
    assert kind is Kind.REFUSED
    assert reason.startswith("unknown file type; segd takes images (.jpg, .jpeg, .png")
    assert "videos (.mp4, .mov, .avi, .mkv), folders of frames" in reason
    assert reason.endswith("and region masks (x.mask.png)")


def test_a_name_that_is_not_utf8_is_refused(tmp_path):
    """A name with a non-UTF-8 byte (listed by os.listdir as a surrogate escape) is refused."""
    fd = os.open(os.path.join(os.fsencode(tmp_path), b"bad\xff.jpg"), os.O_CREAT | os.O_WRONLY)
    os.close(fd)
    (name,) = os.listdir(str(tmp_path))
    assert name == "bad\udcff.jpg"
    assert classify_entry(tmp_path, name) == (
        Kind.REFUSED,
        "the file name is not valid UTF-8; rename it",
    )


def test_a_name_longer_than_200_bytes_is_refused_and_200_is_accepted(tmp_path):
    """The limit is 200 bytes of UTF-8, not 200 characters: 201 bytes (or 103 characters of
    two-byte letters) is refused, exactly 200 bytes is an image."""
    at_limit = "a" * 196 + ".jpg"
    over = "a" * 197 + ".jpg"
    wide = "é" * 99 + ".jpg"  # 103 characters, 202 bytes
    assert (len(at_limit.encode()), len(over.encode()), len(wide.encode())) == (200, 201, 202)
    for name in (at_limit, over, wide):
        make_file(tmp_path, name)
    assert classify_entry(tmp_path, at_limit) == (Kind.IMAGE, "")
    for name in (over, wide):
        assert classify_entry(tmp_path, name) == (
            Kind.REFUSED,
            "the file name is longer than 200 bytes; rename it",
        )


@pytest.mark.parametrize(
    "name", ["a;b.jpg", "a\nb.jpg", "a\\b.jpg", "$(x).jpg", "-rf.jpg", "ünï.jpg", "a\tb.jpg"]
)
def test_a_name_with_characters_outside_the_safe_set_is_refused(tmp_path, name):
    """Separators, shell metacharacters, control characters, non-ASCII letters and a leading '-'
    are refused with a reason that lists the accepted characters."""
    make_file(tmp_path, name)
    kind, reason = classify_entry(tmp_path, name)
    assert kind is Kind.REFUSED
    assert reason == (
        "the file name has characters segd does not accept; use letters, digits, "
        "spaces and ._+=,@()[]-"
    )


def test_a_name_with_every_safe_punctuation_character_is_an_image(tmp_path):
    """Letters, digits, spaces and ._+=,@()[]- are accepted in an image name."""
    name = "Ab_0 .+=,@()[]-z.jpg"
    make_file(tmp_path, name)
    assert classify_entry(tmp_path, name) == (Kind.IMAGE, "")
