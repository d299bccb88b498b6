"""What an inbox entry is, decided from its name and lstat alone (nothing is opened here).

x.jpg / .png / .tif / .bmp / .webp    an image to segment
x.mask.png                            a region mask for the image (or video) with stem x
x.mp4 / .mov / .avi / .mkv            a video to segment and track
x/ (a folder of numbered images)      a video as frames (claimed once its contents settle)
.x.part, x.part, .x (hidden)          a writer's temp file: left alone until renamed
anything else                         refused with a one-line reason (moved to state/failed/)
"""

from __future__ import annotations

import enum
import os
import stat

from worker.inputs import IMAGE_SUFFIXES, MASK_SUFFIX, VIDEO_SUFFIXES
from worker.state import SAFE_NAME_PATTERN

PART_SUFFIX = ".part"


class Kind(enum.Enum):
    IMAGE = "image"
    MASK = "mask"
    VIDEO = "video"
    FRAMES = "frames"  # a folder of frames: a video
    TEMP = "temp"  # being written under a temporary name: wait
    REFUSED = "refused"


def classify(name: str, info: os.stat_result) -> tuple[Kind, str]:
    """(kind, reason) for the inbox entry `name` with lstat result `info`; reason is for REFUSED."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return Kind.REFUSED, "the file name is not valid UTF-8; rename it"
    if len(os.fsencode(name)) > 200:
        return Kind.REFUSED, "the file name is longer than 200 bytes; rename it"
    lower = name.lower()
    if stat.S_ISLNK(info.st_mode):
        return Kind.REFUSED, "is a symbolic link; drop the file itself"
    if lower.endswith(PART_SUFFIX) or name.startswith("."):
        return Kind.TEMP, ""
    if stat.S_ISDIR(info.st_mode):
        if not SAFE_NAME_PATTERN.fullmatch(name):
            return Kind.REFUSED, (
                "the folder name has characters segd does not accept; use letters, digits, "
                "spaces and ._+=,@()[]-"
            )
        if lower.endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
            return Kind.REFUSED, "a folder named like a file; a folder of frames needs a plain name"
        return Kind.FRAMES, ""
    if not stat.S_ISREG(info.st_mode):
        return Kind.REFUSED, "not a regular file (a FIFO, socket or device)"
    if info.st_nlink > 1:
        return Kind.REFUSED, "is a hard link to a file elsewhere; copy or move the file in instead"
    if not SAFE_NAME_PATTERN.fullmatch(name):
        return Kind.REFUSED, (
            "the file name has characters segd does not accept; use letters, digits, "
            "spaces and ._+=,@()[]-"
        )
    if lower.endswith(MASK_SUFFIX):
        return Kind.MASK, ""
    if lower.endswith(IMAGE_SUFFIXES):
        return Kind.IMAGE, ""
    if lower.endswith(VIDEO_SUFFIXES):
        return Kind.VIDEO, ""
    return Kind.REFUSED, (
        f"unknown file type; segd takes images ({', '.join(IMAGE_SUFFIXES)}), videos "
        f"({', '.join(VIDEO_SUFFIXES)}), folders of frames and region masks (x{MASK_SUFFIX})"
    )
