"""What the inbox's names mean: which names segd accepts, which suffixes are images, masks and
videos, which folders are videos (frames named by integers), and the stem an input's results are
published under.

Light (standard library only): the watcher, the workers and the CLI decide from these alone.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv")
# A name is at most 250 bytes of UTF-8: the file systems' limit (NAME_MAX, 255 bytes) less room
# for the one thing segd adds to a name it publishes, a collision suffix (`~2` ... `~9999`). segd's
# temp names (`.tmp-<claim seq>-<token>`, `.upload-<token>.part`) never embed the input's name.
MAX_NAME_BYTES = 250
# SAM2's video loader reads folders of frames named by integers (00000.jpg, 00001.jpg, ...).
FRAME_NAME = re.compile(r"^[0-9]+$")


def name_problem(name: str, what: str = "file") -> str | None:
    """Why `name` cannot be one path component of an input, or None when it can.

    Accepted: any valid UTF-8 name without '/', NUL or other control characters, not '.' or
    '..', not starting with '.' (a writer's temp file: the inbox leaves those alone), at most
    MAX_NAME_BYTES bytes. Names from os.listdir carry undecodable bytes as surrogate escapes.
    """
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return f"the {what} name is not valid UTF-8; rename it"
    if len(encoded) > MAX_NAME_BYTES:
        return f"the {what} name is longer than {MAX_NAME_BYTES} bytes; rename it"
    if not name or name in (".", "..") or "/" in name:
        return f"the {what} name is empty, '.', '..' or holds '/'; rename it"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"the {what} name holds control characters (such as a newline or tab); rename it"
    if name.startswith("."):
        return f"the {what} name starts with '.' (a hidden or temporary file); rename it"
    return None


def is_safe_name(name: str | None) -> bool:
    """True for a name that `name_problem` accepts."""
    return isinstance(name, str) and name_problem(name) is None


def shown(name: str | os.PathLike) -> str:
    """`name` as it may appear in a log line, JSON or a metrics label: undecodable bytes as
    `\\xff` and control characters as `\\n`, `\\t`, `\\x1b`, ... (never raw)."""
    text = os.fsdecode(name) if not isinstance(name, str) else name
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def is_frame_name(name: str) -> bool:
    """True for an image named by an integer (`00012.jpg`): a frame of a video folder."""
    lower = name.lower()
    if not lower.endswith(IMAGE_SUFFIXES) or lower.endswith(MASK_SUFFIX):
        return False
    return bool(FRAME_NAME.fullmatch(Path(name).stem))


def is_image_name(name: str) -> bool:
    """True for an image file name (not a region mask)."""
    lower = name.lower()
    return lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(MASK_SUFFIX)


# Names segd gives its own files inside a job's state folder (state/claimed|done|failed/<id>/):
# an inbox entry with one of them would collide with segd's bookkeeping there (the claim could
# not be written, error.json would land inside the input, a re-drop would land inside the
# input's `duplicates` folder). The one place this rule lives: inbox checks call
# `reserved_name_reason`, and state.py names its files from these constants.
CLAIM_FILE = "claim.json"
ERROR_FILE = "error.json"
DUPLICATES = "duplicates"
ENDED_FILE = "ended.json"  # in done/<job_id>/: when the job ended and the model version that ran
ATTEMPTS_FILE = "attempts.json"  # in claimed/<job_id>/: runs started and ended (deaths per claim)
RETRIES_FILE = "retries.json"  # in a claim retried by `segd retry`: its earlier failures
RESERVED_NAMES = frozenset(
    {CLAIM_FILE, ERROR_FILE, DUPLICATES, ENDED_FILE, ATTEMPTS_FILE, RETRIES_FILE}
)


def reserved_name_reason(name: str) -> str | None:
    """Why the inbox entry `name` cannot be taken as is (it is a name segd uses for its own
    files in a job's state folder), or None. Compared case-insensitively, so the rule holds on
    case-insensitive file systems too."""
    if name.casefold() in RESERVED_NAMES:
        return (
            f"{name!r} is a name segd uses for its own files ({', '.join(sorted(RESERVED_NAMES))}); "
            "rename it"
        )
    return None


def mask_path_for(image_path: str | os.PathLike) -> Path:
    """The region mask that goes with an image: `x.jpg` → `x.mask.png` beside it."""
    image_path = Path(image_path)
    return image_path.with_name(image_stem(image_path) + MASK_SUFFIX)


def image_stem(path: str | os.PathLike) -> str:
    """The name an input's results are published under: `x.jpg` → `x`, `x.mask.png` → `x`."""
    name = Path(path).name
    if name.lower().endswith(MASK_SUFFIX):
        return name[: -len(MASK_SUFFIX)]
    return Path(name).stem


def is_video_input(name: str) -> bool:
    """True for a video file name (x.mp4, .mov, .avi, .mkv) or a frame folder's name (no image
    suffix): inputs that go to the video queue. Decided from the name alone."""
    lower = name.lower()
    return lower.endswith(VIDEO_SUFFIXES) or not lower.endswith(IMAGE_SUFFIXES + (MASK_SUFFIX,))


def relative_parts(folder: str) -> list[str]:
    """The components of a claim's relative inbox folder ('' = the inbox itself), each checked
    with `name_problem`; ValueError for anything else (claims are read back from disk)."""
    if folder == "":
        return []
    parts = folder.split("/")
    for part in parts:
        if name_problem(part, "folder"):
            raise ValueError(f"{shown(folder)!r} is not a relative inbox folder")
    return parts
