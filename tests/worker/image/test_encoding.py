"""worker.image.encoding: the fast result encoders give what the straightforward ones give.

The references below are segd's previous implementations (OpenCV's PNG/JPEG writers, one
full-size comparison per id for the RLEs, addWeighted over the whole image)."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from bench.standin import voronoi_instances
from worker.image import encoding
from worker.image.outputs import color_map, color_png, overlay, palette


def reference_rles(index_map: np.ndarray, ids: list[int]) -> list[dict]:
    """The previous rle_encode: a (K, W, H) stack of comparisons handed to pycocotools."""
    stacked = np.equal(
        index_map.T[None], np.asarray(ids, dtype=index_map.dtype)[:, None, None], order="C"
    )
    rles = mask_utils.encode(np.asfortranarray(stacked.view(np.uint8).transpose(2, 1, 0)))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def _maps() -> list[np.ndarray]:
    """Index maps with the edge cases: ids touching every border, the first and last pixel,
    single pixels, ids absent from the map, a full map, one-row and one-column maps."""
    rng = np.random.default_rng(0)
    maps = [voronoi_instances((97, 131), 40, seed=s).astype(np.uint16) for s in range(3)]
    holes = maps[0].copy()
    holes[rng.random(holes.shape) < 0.3] = 0  # speckle: many tiny runs
    maps.append(holes)
    corner = np.zeros((40, 50), np.uint16)
    corner[0, 0] = 1
    corner[-1, -1] = 2
    corner[:, 20] = 3
    corner[10:30, 30:] = 4
    maps.append(corner)
    maps.append(np.full((30, 20), 7, np.uint16))
    maps.append(rng.integers(0, 4, (1, 300)).astype(np.uint16))
    maps.append(rng.integers(0, 4, (300, 1)).astype(np.uint16))
    maps.append(rng.integers(0, 600, (64, 64)).astype(np.uint16))  # ids beyond 255
    return maps


@pytest.mark.parametrize("case", range(9))
def test_rles_from_the_index_map_equal_the_per_id_encoding_and_decode_to_each_id(case):
    """One pass over the map gives the same RLE strings as encoding each id's mask, and
    pycocotools decodes each to exactly that id's pixels (ids missing from the map included)."""
    index_map = _maps()[case]
    ids = sorted(set(np.unique(index_map).tolist()) - {0}) + [int(index_map.max()) + 1]
    fast = encoding.rle_from_index_map(index_map, ids)
    assert fast == reference_rles(index_map, ids)
    for seg_id, rle in zip(ids, fast, strict=True):
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), index_map == seg_id)


@pytest.mark.parametrize("case", range(9))
def test_index_png_reads_back_as_the_same_uint16_map(case):
    """index.png decodes (OpenCV and Pillow) to the identical uint16 map."""
    index_map = _maps()[case]
    data = encoding.png_uint16(index_map, 1)
    read = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, index_map)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), index_map)


@pytest.mark.parametrize("case", range(9))
def test_color_png_has_the_colours_of_the_previous_rgb_png(case):
    """color.png read back as RGB equals the previous file (palette[id]), with a palette PNG for
    ids <= 255 and an RGB PNG above."""
    index_map = _maps()[case]
    data = color_png(index_map, 1)
    previous = cv2.imencode(".png", color_map(index_map)[:, :, ::-1])[1].tobytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == ("P" if index_map.max() <= 255 else "RGB")
        rgb = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(io.BytesIO(previous)).convert("RGB")))
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(bgr[:, :, ::-1], color_map(index_map))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blending_only_where_segments_are_gives_the_full_image_blend(alpha):
    """The overlay computed on the segments' pixels only equals addWeighted over the whole
    image, masked (the previous overlay), for every pixel."""
    rng = np.random.default_rng(1)
    index_map = voronoi_instances((123, 157), 30)
    index_map[rng.random(index_map.shape) < 0.4] = 0
    index_map = index_map.astype(np.uint16)
    image = rng.integers(0, 256, (*index_map.shape, 3), dtype=np.uint8)
    expected = overlay(image, color_map(index_map), index_map, alpha)
    fast = encoding.blend_where(image, index_map, palette(), alpha)
    np.testing.assert_array_equal(fast, expected)
    empty = np.zeros_like(index_map)
    np.testing.assert_array_equal(encoding.blend_where(image, empty, palette(), alpha), image)


def test_overlay_jpeg_decodes_close_to_the_blended_image():
    """overlay.jpg is a baseline JPEG of the blended pixels (quality 90: mean error < 3 levels)."""
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8), (9, 9), 3)
    data = encoding.jpeg_rgb(image, 90)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert decoded.shape == image.shape
    assert np.abs(decoded - image).mean() < 3
