"""What an inbox entry is, decided from its name and lstat alone (nothing is opened here).

x.jpg / .png / .tif / .bmp / .webp    an image to segment
x.mask.png                            a region mask for the image (or video) with stem x
x.mp4 / .mov / .avi / .mkv            a video to segment and track
x/ (a folder)                         a batch of inputs, or a video as frames when its images are
                                      all named by integers (see `folder_kind`)
claim.json, error.json, duplicates    refused: segd's own names in a job's state folder
.x.part, x.part, .x (hidden)          a writer's temp file: left alone until renamed
anything else                         refused with a one-line reason (moved to state/failed/)
"""

from __future__ import annotations

import enum
import os
import stat

from common.names import (
    IMAGE_SUFFIXES,
    MASK_SUFFIX,
    MAX_NAME_BYTES,
    VIDEO_SUFFIXES,
    is_frame_name,
    name_problem,
    reserved_name_reason,
)

PART_SUFFIX = ".part"


class Kind(enum.Enum):
    IMAGE = "image"
    MASK = "mask"
    VIDEO = "video"
    FOLDER = "folder"  # a batch of inputs, or a folder of frames (a video): see folder_kind
    TEMP = "temp"  # being written under a temporary name: wait
    REFUSED = "refused"


def classify(name: str, info: os.stat_result) -> tuple[Kind, str]:
    """(kind, reason) for the inbox entry `name` with lstat result `info`; reason is for REFUSED."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return Kind.REFUSED, "the file name is not valid UTF-8; rename it"
    if len(os.fsencode(name)) > MAX_NAME_BYTES:
        return Kind.REFUSED, f"the file name is longer than {MAX_NAME_BYTES} bytes; rename it"
    lower = name.lower()
    if stat.S_ISLNK(info.st_mode):
        return Kind.REFUSED, "is a symbolic link; drop the file itself"
    if lower.endswith(PART_SUFFIX) or name.startswith("."):
        return Kind.TEMP, ""
    reserved = reserved_name_reason(name)
    if reserved:  # claim.json, error.json, duplicates: would collide in the job's state folder
        return Kind.REFUSED, reserved
    if stat.S_ISDIR(info.st_mode):
        problem = name_problem(name, "folder")
        if problem:
            return Kind.REFUSED, problem
        if lower.endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES):
            return Kind.REFUSED, "a folder named like a file; a folder of frames needs a plain name"
        return Kind.FOLDER, ""
    if not stat.S_ISREG(info.st_mode):
        return Kind.REFUSED, "not a regular file (a FIFO, socket or device)"
    if info.st_nlink > 1:
        return Kind.REFUSED, "is a hard link to a file elsewhere; copy or move the file in instead"
    problem = name_problem(name)
    if problem:
        return Kind.REFUSED, problem
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


class FolderKind(enum.Enum):
    FRAMES = "frames"  # a video: claimed whole once it settled
    BATCH = "batch"  # each input in it is claimed on its own, as soon as it is complete
    UNDECIDED = "undecided"  # empty, or only temp files so far: wait


def folder_kind(path: os.PathLike[str] | str) -> FolderKind:
    """What a folder in the inbox is, from its listing (nothing is opened).

    The rule: a folder holding at least one image, no subfolder, and whose images are all named
    by integers (`00000.jpg`, `00001.jpg`, ...: SAM2's video convention) is a video (FRAMES).
    Any other folder with something in it is a BATCH. Hidden and `.part` names do not count.
    """
    visible = images = frames = 0
    try:
        entries = list(os.scandir(os.fspath(path)))
    except OSError:
        return FolderKind.UNDECIDED
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.lower().endswith(PART_SUFFIX):
            continue
        if entry.is_dir(follow_symlinks=False):
            return FolderKind.BATCH
        visible += 1
        lower = name.lower()
        if lower.endswith(IMAGE_SUFFIXES) and not lower.endswith(MASK_SUFFIX):
            images += 1
            frames += is_frame_name(name)
    if images == 0:  # other files (notes, a mask) alone do not make a video
        return FolderKind.BATCH if visible else FolderKind.UNDECIDED
    return FolderKind.FRAMES if frames == images else FolderKind.BATCH
