"""Safe decoding of dropped images and region masks.

Files are opened without following symlinks and without blocking (a FIFO named x.png must not
hang a worker), must be regular files under a size cap, and are fully decoded by Pillow, which
refuses truncated data and images over the configured pixel cap before allocating them. Every
refusal is a BadInput naming the file and a one-line reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from worker.errors import BadInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
MASK_SUFFIX = ".mask.png"
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv")


@dataclass(frozen=True)
class LoadedFile:
    """The bytes of one input file and their sha256 (hex)."""

    path: Path
    data: bytes
    sha256: str


def read_file(path: str | os.PathLike, max_bytes: int) -> LoadedFile:
    """Read a regular file safely: no symlinks, no FIFOs or devices, at most `max_bytes`."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInput(path, "file not found") from None
    except OSError as exc:
        if os.path.islink(path):
            raise BadInput(path, "is a symbolic link; drop the file itself") from None
        raise BadInput(path, f"cannot open ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadInput(path, "not a regular file (a FIFO, device or folder)")
        if info.st_size == 0:
            raise BadInput(path, "the file is empty")
        if info.st_size > max_bytes:
            raise BadInput(path, f"the file is {info.st_size} bytes; the limit is {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    return LoadedFile(path=path, data=data, sha256=hashlib.sha256(data).hexdigest())


_HEADER_LOCK = threading.Lock()


def _open_image(loaded: LoadedFile, max_pixels: int) -> Image.Image:
    """Fully decode with Pillow; truncation, bombs and non-images become BadInput."""
    path = loaded.path
    try:
        # Only the header is parsed here. Pillow's own bomb check (a process-wide setting) is
        # off for that instant so ours, with the configured cap and a clear message, decides.
        with _HEADER_LOCK:
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(io.BytesIO(loaded.data))
            finally:
                Image.MAX_IMAGE_PIXELS = previous
        width, height = image.size
        if width * height > max_pixels:
            raise BadInput(
                path,
                f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels "
                "(inputs.max_pixels)",
            )
        image.load()  # full decode: raises on truncated or corrupt data
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(path, "not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadInput(path, f"corrupt or truncated image ({exc})") from None
    return image


def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any Pillow image (grey, RGBA, palette, 16-bit, float) → (H, W, 3) uint8 RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode in ("I", "F"):
            lo, hi = float(array.min()), float(array.max())
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            array = (array - lo) * scale
        else:
            array = array / 257.0  # 16-bit → 8-bit keeps the full range
        grey = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)  # a new, writable array
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black rather than whatever colour they hide.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy (torch wants one)


def decode_image(loaded: LoadedFile, max_pixels: int) -> np.ndarray:
    """Decode an input image to (H, W, 3) uint8 RGB, applying its EXIF orientation."""
    image = _open_image(loaded, max_pixels)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block: keep the pixels as stored
        warnings.warn(f"{loaded.path}: ignoring unreadable EXIF orientation ({exc})", stacklevel=2)
    rgb = _to_rgb8(image)
    if rgb.shape[0] < 2 or rgb.shape[1] < 2:
        raise BadInput(loaded.path, f"the image is {rgb.shape[1]}x{rgb.shape[0]} pixels; too small")
    return rgb


def decode_region_mask(
    loaded: LoadedFile, image_hw: tuple[int, int], max_pixels: int
) -> np.ndarray:
    """Decode a region mask to (H, W) bool: True where any channel is non-zero.

    The mask must have the image's size (after the image's EXIF rotation) and at least one
    non-zero pixel.
    """
    image = _open_image(loaded, max_pixels)
    array = np.asarray(image)
    if image.mode in ("RGBA", "LA"):
        array = array[..., :-1]  # the alpha channel is not part of the region
    region = array != 0 if array.ndim == 2 else np.any(array != 0, axis=2)
    if region.shape != tuple(image_hw):
        raise BadInput(
            loaded.path,
            f"the region mask is {region.shape[1]}x{region.shape[0]} but its image is "
            f"{image_hw[1]}x{image_hw[0]}; they must be the same size",
        )
    if not region.any():
        raise BadInput(loaded.path, "the region mask is empty (no non-zero pixel)")
    return region


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
