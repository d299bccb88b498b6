"""worker.image.outputs: the five result files and their atomic publication."""

import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from common.config import OutputsConfig
from worker.image.outputs import RESULT_FILES, color_map, palette, publish, rle_encode, write_result
from worker.image.segmenter import Segment, Segmentation


def _result(hw=(60, 80)) -> Segmentation:
    index_map = np.zeros(hw, np.uint16)
    index_map[5:20, 10:40] = 1
    index_map[30:55, 50:75] = 2
    index_map[25:28, 5:9] = 3
    segments = [
        Segment(i, 0.9 - i / 10, 0.8, int((index_map == i).sum()), (0, 0, 1, 1), (1.0, 2.0))
        for i in (1, 2, 3)
    ]
    return Segmentation(index_map, segments, region_area=hw[0] * hw[1], points_used=3)


def test_rles_decode_with_pycocotools_to_exactly_each_segment():
    """segments.json RLEs are COCO RLE: pycocotools decodes each to its id's pixels."""
    result = _result()
    rles = rle_encode(result.index_map, [1, 2, 3])
    for seg_id, rle in zip([1, 2, 3], rles, strict=True):
        assert rle["size"] == [60, 80] and isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), result.index_map == seg_id)


def test_the_palette_is_fixed_background_is_black_and_neighbouring_ids_differ():
    """The same id always gets the same colour; 0 is black; the first 256 colours are distinct."""
    lut = palette()
    assert lut.shape == (65536, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in lut[1:257]}) == 256
    # Pinned: changing the palette changes every colour map users have; do it on purpose only.
    assert lut[1].tolist() == [57, 115, 255] and lut[2].tolist() == [134, 229, 0]
    index_map = np.array([[0, 1], [2, 1]], np.uint16)
    np.testing.assert_array_equal(color_map(index_map)[0, 1], color_map(index_map)[1, 1])


def test_write_result_publishes_all_five_files_with_the_manifest_last(tmp_path):
    """The folder holds the five files; index.png is uint16 original-sized; the manifest is newest."""
    image = np.full((60, 80, 3), 100, np.uint8)
    final = write_result(tmp_path / "x", image, _result(), {"job_id": "abc"}, OutputsConfig())
    assert sorted(os.listdir(final)) == sorted(RESULT_FILES)
    index = cv2.imread(str(final / "index.png"), cv2.IMREAD_UNCHANGED)
    assert index.dtype == np.uint16 and index.shape == (60, 80)
    np.testing.assert_array_equal(index, _result().index_map)
    color = cv2.imread(str(final / "color.png"))[:, :, ::-1]
    np.testing.assert_array_equal(color, color_map(index))
    overlay = cv2.imread(str(final / "overlay.jpg"))
    assert overlay.shape == (60, 80, 3)
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["job_id"] == "abc" and "write" in manifest["timings_s"]
    doc = json.loads((final / "segments.json").read_text())
    assert [s["id"] for s in doc["segments"]] == [1, 2, 3]
    newest = max(RESULT_FILES, key=lambda name: os.stat(final / name).st_mtime_ns)
    assert newest == "manifest.json"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temp folder left behind"


def test_a_new_result_replaces_the_old_one_whole(tmp_path):
    """Publishing again swaps the folder: no file of the old result survives, no temp is left."""
    image = np.zeros((60, 80, 3), np.uint8)
    final = write_result(tmp_path / "x", image, _result(), {"run": 1}, OutputsConfig())
    (final / "stale.txt").write_text("from the old result")
    write_result(tmp_path / "x", image, _result(), {"run": 2}, OutputsConfig())
    assert json.loads((final / "manifest.json").read_text())["run"] == 2
    assert not (final / "stale.txt").exists()
    assert os.listdir(tmp_path) == ["x"]


def test_a_failed_write_leaves_the_previous_result_and_no_temp_folder(tmp_path):
    """If writing fails half-way, the old result stays as it was and the temp folder is removed."""
    image = np.zeros((60, 80, 3), np.uint8)
    final = write_result(tmp_path / "x", image, _result(), {"run": 1}, OutputsConfig())
    with pytest.raises(TypeError):
        write_result(tmp_path / "x", image, _result(), {"bad": object()}, OutputsConfig())
    assert json.loads((final / "manifest.json").read_text())["run"] == 1
    assert os.listdir(tmp_path) == ["x"]


def test_publish_into_an_empty_place_is_a_plain_rename(tmp_path):
    """The first result for a name appears with one rename; the parent directory is synced."""
    tmp = tmp_path / ".tmp-y"
    tmp.mkdir()
    (tmp / "manifest.json").write_text("{}")
    publish(tmp, tmp_path / "y")
    assert (tmp_path / "y" / "manifest.json").exists() and not tmp.exists()


def test_an_older_claims_result_never_replaces_a_newer_published_one(tmp_path):
    """Two workers finish out of order: the later claim's result (e.g. with a late mask) is
    published first, the earlier claim's result afterwards is dropped at publication, leaving the
    newer result and no temp folder; a result of the same or a later claim replaces it."""
    image = np.full((60, 80, 3), 100, np.uint8)
    final = tmp_path / "x"
    write_result(final, image, _result(), {"job_id": "masked", "claim_seq": 20}, OutputsConfig())
    write_result(final, image, _result(), {"job_id": "plain", "claim_seq": 10}, OutputsConfig())
    assert json.loads((final / "manifest.json").read_text())["job_id"] == "masked"
    assert os.listdir(tmp_path) == ["x"]
    write_result(final, image, _result(), {"job_id": "later", "claim_seq": 30}, OutputsConfig())
    assert json.loads((final / "manifest.json").read_text())["job_id"] == "later"
    assert os.listdir(tmp_path) == ["x"]


def test_publish_reports_whether_it_published(tmp_path):
    """publish returns False (and removes the temp folder) when a later claim's result is there."""
    final = tmp_path / "x"
    final.mkdir()
    (final / "manifest.json").write_text(json.dumps({"claim_seq": 5}))
    tmp = tmp_path / ".tmp-x-1"
    tmp.mkdir()
    (tmp / "manifest.json").write_text(json.dumps({"claim_seq": 4}))
    assert publish(tmp, final, 4) is False and not tmp.exists()
    tmp.mkdir()
    (tmp / "manifest.json").write_text(json.dumps({"claim_seq": 6}))
    assert publish(tmp, final, 6) is True
    assert json.loads((final / "manifest.json").read_text())["claim_seq"] == 6
    assert os.listdir(tmp_path) == ["x"]
