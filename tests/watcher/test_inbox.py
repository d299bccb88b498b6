"""watcher.inbox: what an inbox entry is, decided from its name and os.lstat alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.names import IMAGE_SUFFIXES
from watcher.inbox import FolderKind, Kind, classify, folder_kind

EVERYDAY_NAMES = [
    "样品 01.jpg",
    "café crème.jpg",
    "photo#12.jpg",
    "it's here.jpg",
    "a&b (copy).jpg",
    "Ünïcödé.png",
    "$(x).jpg",
    "-rf.jpg",
    "a;b\\c.jpg",
]


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


def test_a_plainly_named_folder_is_a_folder(tmp_path):
    """A folder with a plain name (any language) is a folder: a batch or a video (folder_kind)."""
    for name in ("clip 01", "visit 2026-12-01", "样品"):
        (tmp_path / name).mkdir()
        assert classify_entry(tmp_path, name) == (Kind.FOLDER, "")


def _folder(tmp_path: Path, names: list[str]) -> Path:
    folder = tmp_path / "f"
    folder.mkdir()
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
        else:
            (folder / name).write_bytes(b"x")
    return folder


@pytest.mark.parametrize(
    "names",
    [
        ["00000.jpg", "00001.jpg", "00002.jpg"],
        ["0.png", "1.png", "10.png"],
        ["000.png", ".001.png.part", "notes.txt"],
    ],
)
def test_a_folder_whose_images_are_all_named_by_integers_is_a_video(tmp_path, names):
    """Images named by integers only (SAM2's frame convention; temp files and other files do not
    count) make the folder a video of frames."""
    assert folder_kind(_folder(tmp_path, names)) is FolderKind.FRAMES


@pytest.mark.parametrize(
    "names",
    [
        ["IMG_0001.jpg", "IMG_0002.jpg"],
        ["00000.jpg", "00001.jpg", "cover.jpg"],
        ["00000.jpg", "sub/"],
        ["sub/"],
        ["notes.txt"],
        ["0001a.jpg"],
    ],
)
def test_any_other_folder_with_something_in_it_is_a_batch(tmp_path, names):
    """An image not named by an integer, a subfolder, or only other files: a batch of inputs."""
    assert folder_kind(_folder(tmp_path, names)) is FolderKind.BATCH


@pytest.mark.parametrize("names", [[], [".a.jpg.part"], ["x.jpg.part"]])
def test_an_empty_folder_or_one_with_only_temp_files_is_undecided(tmp_path, names):
    """Nothing to decide from yet: the watcher waits."""
    assert folder_kind(_folder(tmp_path, names)) is FolderKind.UNDECIDED


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


def test_a_name_longer_than_250_bytes_is_refused_and_250_is_accepted(tmp_path):
    """The limit is 250 bytes of UTF-8 (NAME_MAX less room for a collision suffix `~N`), not 250
    characters: 251 bytes (or 128 characters of two-byte letters) is refused, exactly 250 bytes
    is an image."""
    at_limit = "a" * 246 + ".jpg"
    over = "a" * 247 + ".jpg"
    wide = "é" * 124 + ".jpg"  # 128 characters, 252 bytes
    assert (len(at_limit.encode()), len(over.encode()), len(wide.encode())) == (250, 251, 252)
    for name in (at_limit, over, wide):
        make_file(tmp_path, name)
    assert classify_entry(tmp_path, at_limit) == (Kind.IMAGE, "")
    for name in (over, wide):
        assert classify_entry(tmp_path, name) == (
            Kind.REFUSED,
            "the file name is longer than 250 bytes; rename it",
        )


@pytest.mark.parametrize("name", EVERYDAY_NAMES)
def test_everyday_names_in_any_language_with_punctuation_are_images(tmp_path, name):
    """Chinese, accents, spaces, '#', '&', "'", brackets and shell metacharacters are accepted:
    segd never hands a name to a shell."""
    make_file(tmp_path, name)
    assert classify_entry(tmp_path, name) == (Kind.IMAGE, "")


@pytest.mark.parametrize("name", ["a\nb.jpg", "a\tb.jpg", "a\x1bb.jpg", "a\x7fb.jpg"])
def test_a_name_with_control_characters_is_refused(tmp_path, name):
    """Newlines, tabs, escapes and DEL are refused with the reason."""
    make_file(tmp_path, name)
    assert classify_entry(tmp_path, name) == (
        Kind.REFUSED,
        "the file name holds control characters (such as a newline or tab); rename it",
    )


def test_a_folder_name_with_control_characters_is_refused(tmp_path):
    """The same rule for folders, named as a folder."""
    (tmp_path / "a\rb").mkdir()
    assert classify_entry(tmp_path, "a\rb") == (
        Kind.REFUSED,
        "the folder name holds control characters (such as a newline or tab); rename it",
    )
