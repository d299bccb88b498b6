"""Small JPEG pictures of results, made by the web process the first time a page asks for them and
cached under `<paths.state>/web/thumbs/`, so the workers never spend a cycle on them.

    <state>/web/thumbs/<job_id>-<px>.jpg     the result's overlay.jpg (a video: the first frame of
                                             color.mp4), longest side web.thumbnail_px
    <state>/web/thumbs/<job_id>-input.jpg    the input image (state/done/<job_id>/), at most
                                             INPUT_PX on its longest side, for the result page

The key is the result's job id (a hash of the input, its mask and the model version), so a newer
result under the same name gets a new picture; stale ones are only disk space.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from common.state import JOB_ID_PATTERN
from segd.web.data import MANIFEST, read_json

THUMBS = Path("web") / "thumbs"
INPUT_PX = 1600
JPEG_QUALITY = 85


def cache_dir(state_dir: Path) -> Path:
    return Path(state_dir) / THUMBS


def _key(folder: Path) -> str:
    """The result's job id, or (no valid one: a result written by hand) a hash of where it is and
    when it was written."""
    job_id = read_json(folder / MANIFEST).get("job_id")
    if isinstance(job_id, str) and JOB_ID_PATTERN.fullmatch(job_id):
        return job_id
    try:
        mtime = (folder / MANIFEST).stat().st_mtime_ns
    except OSError:
        mtime = 0
    return hashlib.sha256(f"{folder}|{mtime}".encode()).hexdigest()[:32]


def result_thumbnail(state_dir: Path, folder: Path, px: int) -> Path | None:
    """The cached thumbnail of the result in `folder` (made now if missing); None when the result
    has no picture to show."""
    target = cache_dir(state_dir) / f"{_key(folder)}-{px}.jpg"
    if target.is_file():
        return target
    overlay = folder / "overlay.jpg"
    if overlay.is_file():
        return _save(_shrunk(overlay, px), target)
    video = folder / "color.mp4"
    if video.is_file():
        frame = _first_frame(video)
        return _save(_fit(frame, px), target) if frame is not None else None
    return None


def input_preview(state_dir: Path, image: Path, job_id: str) -> Path | None:
    """A display-sized JPEG copy of a done job's input image (cached); None if it cannot be read."""
    if not JOB_ID_PATTERN.fullmatch(job_id):
        return None
    target = cache_dir(state_dir) / f"{job_id}-input.jpg"
    if target.is_file():
        return target
    try:
        return _save(_shrunk(image, INPUT_PX), target)
    except OSError:
        return None


def _shrunk(path: Path, px: int):
    """A Pillow RGB image of `path`, longest side at most `px` (JPEG decoded at reduced size)."""
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (px, px))  # JPEG: let the decoder scale down (much faster)
        return _fit(image.convert("RGB"), px)


def _fit(image, px: int):
    from PIL import Image

    image = image.copy()
    image.thumbnail((px, px), Image.Resampling.LANCZOS)
    return image


def _first_frame(video: Path):
    import cv2
    from PIL import Image

    capture = cv2.VideoCapture(str(video))
    try:
        ok, frame = capture.read()
    finally:
        capture.release()
    return Image.fromarray(frame[:, :, ::-1]) if ok else None


def _save(image, target: Path) -> Path:
    """Write atomically (temp name, then rename): a reader never sees half a thumbnail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
