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
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import BadInput


@dataclass(frozen=True)
class LoadedFile:
    """The bytes of one input file and their sha256 (hex)."""

    path: Path
    data: bytes
    sha256: str


def open_input(path: Path) -> int:
    """A read-only descriptor of `path`, opened without following a symlink and without blocking
    (a FIFO named x.png must not hang a worker). Raises BadInput naming the reason."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BadInput(path, "file not found") from None
    except OSError as exc:
        if os.path.islink(path):
            raise BadInput(path, "is a symbolic link; drop the file itself") from None
        raise BadInput(path, f"cannot open ({exc.strerror})") from None


def read_file(path: str | os.PathLike, max_bytes: int) -> LoadedFile:
    """Read a regular file safely: no symlinks, no FIFOs or devices, at most `max_bytes`."""
    path = Path(path)
    fd = open_input(path)
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


def _open_image(loaded: LoadedFile, max_pixels: int, load: bool = True) -> Image.Image:
    """Fully decode with Pillow (only the header with load=False); truncation, bombs and
    non-images become BadInput."""
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
        if load:
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


# EXIF orientation → the numpy view that undoes it (as ImageOps.exif_transpose does).
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _fast_jpeg(loaded: LoadedFile, header: Image.Image) -> np.ndarray | None:
    """An RGB or grey baseline/progressive JPEG decoded by libjpeg-turbo directly (3-4x faster
    than through Pillow at 12 MP; the same accurate DCT and upsampling, so the same pixels), its
    EXIF orientation applied; None for anything else (Pillow decodes those)."""
    if header.format != "JPEG" or header.mode not in ("RGB", "L"):
        return None
    try:
        orientation = int(header.getexif().get(0x0112, 1))
    except Exception:
        return None  # an unreadable EXIF block: Pillow's path warns and keeps the pixels
    try:
        rgb = simplejpeg.decode_jpeg(loaded.data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise BadInput(loaded.path, f"corrupt or truncated image ({exc})") from None
    if rgb.shape[:2] != (header.size[1], header.size[0]):
        return None
    if orientation in _ORIENT:
        rgb = np.ascontiguousarray(_ORIENT[orientation](rgb))
    return rgb


def decode_image(loaded: LoadedFile, max_pixels: int) -> np.ndarray:
    """Decode an input image to (H, W, 3) uint8 RGB, applying its EXIF orientation."""
    rgb = _fast_jpeg(loaded, _open_image(loaded, max_pixels, load=False))
    if rgb is None:
        image = _open_image(loaded, max_pixels)
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # a broken EXIF block: keep the pixels as stored
            warnings.warn(
                f"{loaded.path}: ignoring unreadable EXIF orientation ({exc})", stacklevel=2
            )
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
