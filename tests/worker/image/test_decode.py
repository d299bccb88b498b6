"""worker.image.decode: safe reading of dropped files, image decoding to RGB8, and region masks.

Every image is generated here with Pillow/numpy into tmp_path; only the labpics sample is read
from the shared data folder (through copies).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.errors import BadInput
from common.names import image_stem, mask_path_for
from worker.image.decode import decode_image, decode_region_mask, read_file

MAX_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 64_000_000
SAMPLE_HW = (678, 687)  # labpics_sample_image.jpg is 687 wide, 678 high


def save(image: Image.Image, path: Path, **params) -> Path:
    image.save(path, **params)
    return path


def decode(path: Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_image(read_file(path, MAX_BYTES), max_pixels)


def assert_rgb8(array: np.ndarray, hw: tuple[int, int]) -> None:
    assert array.shape == (*hw, 3)
    assert array.dtype == np.uint8
    assert array.flags.writeable


def pattern_rgb(h: int = 24, w: int = 32) -> np.ndarray:
    """A deterministic RGB pattern with distinct values in every channel."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 7) % 256, (y * 11) % 256, (x + y * 3) % 256], axis=2).astype(np.uint8)


# --- conversions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".png", {}),
        (".webp", {"lossless": True}),
        (".bmp", {}),
        (".tif", {}),
    ],
)
def test_lossless_rgb_formats_decode_to_identical_pixels(tmp_path, suffix, params):
    """8-bit RGB PNG, lossless WebP, BMP and TIFF decode to the exact (H, W, 3) uint8 pixels."""
    pixels = pattern_rgb()
    path = save(Image.fromarray(pixels, "RGB"), tmp_path / f"x{suffix}", **params)

    out = decode(path)

    assert_rgb8(out, (24, 32))
    np.testing.assert_array_equal(out, pixels)


def test_grey_image_is_replicated_to_three_channels(tmp_path):
    """A mode L image decodes to RGB with the grey value in all three channels."""
    grey = (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8)
    path = save(Image.fromarray(grey, "L"), tmp_path / "grey.png")

    out = decode(path)

    assert_rgb8(out, (24, 32))
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_rgba_fully_transparent_pixels_become_black(tmp_path):
    """RGBA: opaque pixels keep their colour, fully transparent ones become black."""
    rgba = np.zeros((8, 10, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:4, ..., 3] = 255  # top half opaque, bottom half fully transparent
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")

    out = decode(path)

    assert_rgb8(out, (8, 10))
    assert (out[:4] == (200, 100, 50)).all()
    assert (out[4:] == 0).all()


def test_palette_image_is_expanded_to_its_colours(tmp_path):
    """A mode P image decodes to the palette colours of its indices."""
    image = Image.new("P", (6, 4))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    indices = np.array([[0, 1, 2, 0, 1, 2]] * 4, dtype=np.uint8)
    image.putdata(indices.ravel().tolist())
    path = save(image, tmp_path / "palette.png")
    assert Image.open(path).mode == "P"

    out = decode(path)

    assert_rgb8(out, (4, 6))
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)
    np.testing.assert_array_equal(out, colours[indices])


def test_palette_transparent_index_becomes_black(tmp_path):
    """A palette image's transparent index decodes to black, not to the colour it hides."""
    image = Image.new("P", (4, 2))
    image.putpalette([255, 255, 255, 10, 20, 30] + [0] * (256 * 3 - 6))
    image.putdata([0, 0, 1, 1, 0, 0, 1, 1])
    path = save(image, tmp_path / "palette_t.png", transparency=0)

    out = decode(path)

    assert (out[:, :2] == 0).all()
    assert (out[:, 2:] == (10, 20, 30)).all()


def test_16_bit_grey_png_is_scaled_by_257(tmp_path):
    """A 16-bit grey PNG (mode I;16) maps 65535 to 255 and 257*k to k."""
    values = np.array([[0, 257 * 3, 257 * 100], [65535, 257 * 200, 257 * 1]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"

    out = decode(path)

    assert_rgb8(out, (2, 3))
    expected = np.array([[0, 3, 100], [255, 200, 1]], dtype=np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], expected)


def test_uniform_16_bit_grey_png_keeps_its_level(tmp_path):
    """A uniform 16-bit image of 257*k decodes to k everywhere (no min/max stretching)."""
    path = save(Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16)), tmp_path / "u.png")

    assert (decode(path) == 100).all()


def test_exif_orientation_6_rotates_the_jpeg(tmp_path):
    """A JPEG with EXIF orientation 6 is returned rotated: H and W swap, its left side on top."""
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)  # left half red
    pixels[:, 40:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(Image.fromarray(pixels, "RGB"), tmp_path / "rotated.jpg", exif=exif, quality=95)

    out = decode(path)

    assert_rgb8(out, (80, 40))
    top, bottom = out[5:30].reshape(-1, 3).mean(axis=0), out[50:75].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[2] < 50  # red
    assert bottom[2] > 200 and bottom[0] < 50  # blue


def test_sample_jpeg_decodes_to_its_size(data_copy):
    """The labpics sample JPEG decodes to (678, 687, 3) uint8."""
    (path,) = data_copy("labpics_sample_image.jpg")

    assert_rgb8(decode(path), SAMPLE_HW)


def test_read_file_returns_bytes_and_their_sha256(tmp_path):
    """read_file gives the file's path, bytes and their sha256."""
    import hashlib

    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 100)

    loaded = read_file(path, max_bytes=300)

    assert loaded.path == path
    assert loaded.data == b"abc" * 100
    assert loaded.sha256 == hashlib.sha256(b"abc" * 100).hexdigest()


# --- hostile inputs ---------------------------------------------------------------------------


def assert_names(excinfo: pytest.ExceptionInfo[BadInput], path: Path) -> None:
    assert excinfo.value.path == str(path)
    assert str(excinfo.value).startswith(f"{path}: ")


def test_truncated_jpeg_is_corrupt_or_truncated(tmp_path, data_dir):
    """The first half of a JPEG is refused as corrupt or truncated."""
    data = (data_dir / "labpics_sample_image.jpg").read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(BadInput, match="corrupt or truncated") as excinfo:
        decode(path)
    assert_names(excinfo, path)


def test_empty_file_is_refused(tmp_path):
    """An empty file is refused as empty."""
    path = tmp_path / "x.png"
    path.write_bytes(b"")

    with pytest.raises(BadInput, match="empty") as excinfo:
        read_file(path, MAX_BYTES)
    assert_names(excinfo, path)


def test_text_file_named_png_is_not_an_image(tmp_path):
    """A text file named x.png is refused as not an image."""
    path = tmp_path / "x.png"
    path.write_text("hello, I am not a picture\n")

    with pytest.raises(BadInput, match="not an image") as excinfo:
        decode(path)
    assert_names(excinfo, path)


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    """A 20000x20000 (400 Mpixel) PNG that is tiny on disk."""
    path = save(Image.new("1", (20000, 20000)), tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 1_000_000
    return path


def test_png_bomb_is_refused_before_decoding(png_bomb):
    """A 20000x20000 PNG over max_pixels is refused, the message naming the limit."""
    with pytest.raises(BadInput, match="limit") as excinfo:
        decode(png_bomb, max_pixels=64_000_000)
    assert_names(excinfo, png_bomb)


def test_png_bomb_message_gives_the_size_and_the_configured_limit(png_bomb):
    """The refusal of a 20000x20000 PNG names its size and the configured pixel limit."""
    with pytest.raises(BadInput, match="limit") as excinfo:
        decode(png_bomb, max_pixels=64_000_000)
    assert "20000x20000" in str(excinfo.value)
    assert "64000000" in str(excinfo.value)


def test_symlink_to_a_file_outside_the_folder_is_refused(tmp_path):
    """A symbolic link (here to a file outside the folder) is refused, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = save(Image.fromarray(pattern_rgb(), "RGB"), outside / "secret.png")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    link = inbox / "x.png"
    link.symlink_to(target)

    with pytest.raises(BadInput, match="symbolic link") as excinfo:
        read_file(link, MAX_BYTES)
    assert_names(excinfo, link)


def test_fifo_is_refused_without_blocking(tmp_path):
    """A FIFO named x.png (no writer) is refused as not a regular file, and does not hang."""
    path = tmp_path / "x.png"
    os.mkfifo(path)

    with pytest.raises(BadInput, match="not a regular file") as excinfo:
        read_file(path, MAX_BYTES)
    assert_names(excinfo, path)


def test_directory_named_like_an_image_is_refused(tmp_path):
    """A directory named x.png is refused as not a regular file."""
    path = tmp_path / "x.png"
    path.mkdir()

    with pytest.raises(BadInput, match="not a regular file") as excinfo:
        read_file(path, MAX_BYTES)
    assert_names(excinfo, path)


def test_file_over_max_bytes_is_refused_and_one_at_the_limit_is_read(tmp_path):
    """A file above max_bytes is refused, naming its size and the limit; max_bytes is fine."""
    path = tmp_path / "x.png"
    path.write_bytes(b"\0" * 1001)

    with pytest.raises(BadInput, match="the file is 1001 bytes; the limit is 1000") as excinfo:
        read_file(path, max_bytes=1000)
    assert_names(excinfo, path)
    assert len(read_file(path, max_bytes=1001).data) == 1001


def test_missing_file_is_reported_as_not_found(tmp_path):
    """A path that does not exist is refused as not found."""
    path = tmp_path / "gone.png"

    with pytest.raises(BadInput, match="file not found") as excinfo:
        read_file(path, MAX_BYTES)
    assert_names(excinfo, path)


def test_one_pixel_wide_image_is_too_small(tmp_path):
    """An image 1 pixel wide is refused as too small, naming its size."""
    path = save(Image.new("RGB", (1, 5)), tmp_path / "thin.png")

    with pytest.raises(BadInput, match="1x5 pixels; too small") as excinfo:
        decode(path)
    assert_names(excinfo, path)


# --- region masks -----------------------------------------------------------------------------


def load_mask(path: Path, image_hw: tuple[int, int]) -> np.ndarray:
    return decode_region_mask(read_file(path, MAX_BYTES), image_hw, MAX_PIXELS)


def test_sample_region_mask_matches_the_sample_image(data_copy):
    """The sample mask decodes to (H, W) bool of the sample image's size, with both values."""
    image_path, mask_path = data_copy("labpics_sample_image.jpg", "labpics_sample_region_mask.png")
    image = decode(image_path)

    region = load_mask(mask_path, image.shape[:2])

    assert region.shape == image.shape[:2] == SAMPLE_HW
    assert region.dtype == np.bool_
    assert region.any() and not region.all()


def test_region_is_true_where_any_channel_is_non_zero(tmp_path):
    """An RGB mask counts a pixel as region when any one channel is non-zero."""
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    rgb[0, 0] = (0, 0, 1)
    rgb[3, 4] = (9, 0, 0)
    path = save(Image.fromarray(rgb, "RGB"), tmp_path / "x.mask.png")

    region = load_mask(path, (4, 5))

    expected = np.zeros((4, 5), dtype=bool)
    expected[0, 0] = expected[3, 4] = True
    np.testing.assert_array_equal(region, expected)


def test_region_mask_of_another_size_is_refused_naming_both_sizes(tmp_path):
    """A mask whose size differs from the image's is refused, giving both sizes as WxH."""
    path = save(Image.new("L", (100, 50), 255), tmp_path / "x.mask.png")

    with pytest.raises(
        BadInput, match=re.escape("is 100x50 but its image is 687x678; they must be the same size")
    ) as excinfo:
        load_mask(path, SAMPLE_HW)
    assert_names(excinfo, path)


def test_all_zero_region_mask_is_empty(tmp_path):
    """A mask with no non-zero pixel is refused as empty."""
    path = save(Image.new("L", (8, 6), 0), tmp_path / "x.mask.png")

    with pytest.raises(BadInput, match="empty") as excinfo:
        load_mask(path, (6, 8))
    assert_names(excinfo, path)


def test_rgba_mask_alpha_is_ignored(tmp_path):
    """An RGBA mask with opaque alpha but black RGB is empty: the alpha channel does not count."""
    path = save(Image.new("RGBA", (8, 6), (0, 0, 0, 255)), tmp_path / "x.mask.png")

    with pytest.raises(BadInput, match="empty"):
        load_mask(path, (6, 8))


# --- names ------------------------------------------------------------------------------------


def test_mask_path_sits_beside_the_image():
    """x.jpg's region mask is x.mask.png in the same folder."""
    assert mask_path_for("a/x.jpg") == Path("a/x.mask.png")
    assert mask_path_for(Path("/in/photo.2024.png")) == Path("/in/photo.2024.mask.png")


@pytest.mark.parametrize(
    ("name", "stem"),
    [("x.mask.png", "x"), ("x.MASK.PNG", "x"), ("x.tar.jpg", "x.tar"), ("dir/x.jpg", "x")],
)
def test_image_stem_drops_the_suffix_and_the_mask_suffix(name, stem):
    """The published name drops the last suffix, or the whole `.mask.png` of a mask."""
    assert image_stem(name) == stem


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpegs_decode_to_pillows_pixels_in_every_orientation(tmp_path, orientation, mode):
    """The libjpeg-turbo path gives exactly Pillow's pixels, EXIF orientation applied as
    ImageOps.exif_transpose does, for colour and grey JPEGs."""
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(image, tmp_path / "o.jpg", exif=exif, quality=90)

    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(decode(path), expected)


def test_the_sample_photos_decode_to_pillows_pixels(data_dir):
    """Real camera JPEGs: identical pixels to Pillow's decoder."""
    for name in ("labpics_sample_image.jpg", "groceries.jpg", "truck.jpg"):
        expected = np.asarray(Image.open(data_dir / name).convert("RGB"))
        np.testing.assert_array_equal(decode(data_dir / name), expected)
