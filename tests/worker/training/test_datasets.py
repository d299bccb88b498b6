"""Labelled folders: pairing, checking every file up front, confinement, the LabPics adapter."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.synthetic import draw_scene, labelled_folder, write_pair
from worker.training.datasets import DatasetError, merge_labpics, open_dataset, read_sample, resolve

LIMITS = {"max_bytes": 10**8, "max_pixels": 10**8}


def test_a_good_folder_pairs_every_image_and_splits_deterministically(tmp_path):
    root = labelled_folder(tmp_path / "shapes", images=10)
    first = open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)
    again = open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)
    assert len(first.train) == 8 and len(first.val) == 2
    assert [s.name for s in first.val] == [s.name for s in again.val]
    assert not {s.name for s in first.val} & {s.name for s in first.train}
    drawn = sum(len(np.unique(draw_scene(128, 3, seed=i)[1])) - 1 for i in range(10))
    assert first.instances == drawn and first.val_source == "split 0.2"
    assert first.fingerprint == again.fingerprint


def test_a_val_folder_is_used_as_is_and_uint16_labels_keep_their_ids(tmp_path):
    root = labelled_folder(tmp_path / "shapes", images=3, val=2)
    image, label = draw_scene(64, 2, seed=5)
    label[label == 2] = 40000  # only representable in uint16
    write_pair(root, "big", image, label, uint16=True)
    data = open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)
    assert [s.name for s in data.val] == ["val000", "val001"] and data.val_source == "val/"
    assert len(data.train) == 4
    big = next(s for s in data.train if s.name == "big")
    _, read = read_sample(big, **LIMITS)
    assert set(np.unique(read)) == {0, 1, 40000}


def test_changing_one_file_changes_the_fingerprint(tmp_path):
    root = labelled_folder(tmp_path / "shapes", images=3)
    before = open_dataset(root, val_fraction=0.2, seed=0, **LIMITS).fingerprint
    image, label = draw_scene(128, 3, seed=99)
    write_pair(root, "img001", image, label)
    assert open_dataset(root, val_fraction=0.2, seed=0, **LIMITS).fingerprint != before


def test_a_malformed_dataset_names_every_bad_file_before_training(tmp_path):
    root = labelled_folder(tmp_path / "bad", images=2)
    (root / "labels" / "img001.png").unlink()  # missing label
    image, label = draw_scene(64, 2, seed=1)
    Image.fromarray(label.astype(np.uint8)).save(root / "labels" / "orphan.png")  # no image
    Image.fromarray(image).save(root / "images" / "small.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "labels" / "small.png")  # size
    (root / "images" / "text.png").write_text("not a png")  # undecodable
    Image.fromarray(label.astype(np.uint8)).save(root / "labels" / "text.png")
    Image.fromarray(image).save(root / "images" / "rgb.png")
    Image.fromarray(image).save(root / "labels" / "rgb.png")  # an RGB picture, not ids

    with pytest.raises(DatasetError) as caught:
        open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)
    problems = caught.value.problems
    text = str(caught.value)
    assert len(problems) == 5, problems
    assert "img001.png: no label" in text
    assert "orphan.png: a label without an image" in text
    assert "small.png: the label is 32x32 but its image small.png is 64x64" in text
    assert "text.png: not an image Pillow can read" in text
    assert "rgb.png: labels must be one-channel instance index PNGs" in text
    assert text.startswith(f"{root}: 5 problem(s), nothing was trained")


def test_a_dataset_of_empty_labels_is_refused(tmp_path):
    root = tmp_path / "empty"
    image, _ = draw_scene(64, 0, seed=0)
    write_pair(root, "a", image, np.zeros((64, 64), np.int32))
    with pytest.raises(DatasetError, match="every label is empty"):
        open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)


def test_paths_outside_the_datasets_root_are_refused(tmp_path):
    root = tmp_path / "datasets"
    inside = labelled_folder(root / "shapes", images=1)
    outside = labelled_folder(tmp_path / "elsewhere", images=1)
    os.symlink(outside, root / "link")
    assert resolve("shapes", root) == inside.resolve()
    assert resolve(str(inside), root) == inside.resolve()
    for name in (str(outside), "../elsewhere", "link", "shapes/../../elsewhere"):
        with pytest.raises(DatasetError, match=r"outside the datasets root .*refused"):
            resolve(name, root)
    with pytest.raises(DatasetError, match="no such folder"):
        resolve("missing", root)


def test_labpics_merges_ids_above_127_without_collisions():
    """200 materials and 200 vessels: every instance keeps a distinct id (uint8 would wrap)."""
    instance = np.zeros((40, 400, 3), np.uint8)  # RGB: red = vessel ids, blue = material ids
    for i in range(200):
        instance[:20, 2 * i : 2 * i + 2, 2] = i + 1  # material i+1 on the top half
        instance[20:, 2 * i : 2 * i + 2, 0] = i + 1  # vessel i+1 on the bottom half
    instance[:20, :2, 0] = 7  # a vessel under a material: the material wins there
    merged = merge_labpics(instance)
    assert merged.dtype == np.int32
    ids = np.unique(merged)
    assert len(ids) == 400 and ids.min() == 1 and ids.max() == 400
    assert (merged[:20] == instance[:20, :, 2]).all()  # materials keep their ids
    assert (merged[20:] == instance[20:, :, 0].astype(np.int32) + 200).all()  # vessels shifted


def test_the_labpics_layout_is_read_with_its_test_split(tmp_path):
    root = tmp_path / "LabPics"
    for split, count in (("Train", 3), ("Test", 1)):
        (root / "Simple" / split / "Image").mkdir(parents=True)
        (root / "Simple" / split / "Instance").mkdir(parents=True)
        for i in range(count):
            image, label = draw_scene(64, 2, seed=i)
            Image.fromarray(image).save(root / "Simple" / split / "Image" / f"{split}{i}.jpg")
            rgb = np.zeros((64, 64, 3), np.uint8)
            rgb[..., 2] = np.where(label == 1, 150, 0)  # a material with id 150
            rgb[..., 0] = np.where(label == 2, 200, 0)  # a vessel with id 200
            Image.fromarray(rgb).save(root / "Simple" / split / "Instance" / f"{split}{i}.png")
    data = open_dataset(root, val_fraction=0.2, seed=0, **LIMITS)
    assert data.layout == "labpics" and data.val_source == "Simple/Test"
    assert len(data.train) == 3 and len(data.val) == 1
    _, label = read_sample(data.train[0], **LIMITS)
    assert set(np.unique(label)) == {0, 150, 350}


def _evil_folders(tmp_path):
    """A datasets root and, outside it, a labelled folder whose file names must never show."""
    root = tmp_path / "datasets"
    root.mkdir()
    outside = labelled_folder(tmp_path / "elsewhere", images=2, val=1)
    for folder in (outside / "images", outside / "labels"):
        for path in folder.iterdir():
            path.rename(path.with_name("secret-" + path.name))
    return root, outside


def test_an_images_folder_linking_outside_the_root_is_refused_without_listing_it(tmp_path):
    """`images/` symlinked to a folder outside training.datasets_root is refused, named by its
    place in the dataset, and no file name of the outside folder appears in the error."""
    root, outside = _evil_folders(tmp_path)
    evil = root / "evil"
    evil.mkdir()
    os.symlink(outside / "images", evil / "images")
    os.symlink(outside / "labels", evil / "labels")

    with pytest.raises(DatasetError, match="nothing was trained") as excinfo:
        open_dataset(evil, val_fraction=0.2, seed=0, datasets_root=root, **LIMITS)

    message = str(excinfo.value)
    assert f"{evil / 'images'}: links outside the datasets root {root.resolve()}" in message
    assert "(training.datasets_root); refused" in message
    assert "secret-" not in message and str(outside) not in message


def test_val_labpics_folders_and_single_files_linking_outside_are_refused(tmp_path):
    """A symlinked val/, a symlinked LabPics Simple/Train and one symlinked image file are each
    refused with the path inside the dataset; the linked file is not trained on."""
    root, outside = _evil_folders(tmp_path)
    val_link = labelled_folder(root / "val-link", images=2)
    os.symlink(outside / "val", val_link / "val")
    one_file = labelled_folder(root / "one-file", images=2)
    (one_file / "images" / "img000.png").unlink()
    os.symlink(outside / "images" / "secret-img000.png", one_file / "images" / "img000.png")
    labpics = root / "labpics" / "Simple"
    labpics.mkdir(parents=True)
    (outside / "Train").mkdir()
    os.symlink(outside / "Train", labpics / "Train")

    for dataset, linked in (
        (val_link, val_link / "val"),
        (one_file, one_file / "images" / "img000.png"),
        (root / "labpics", labpics / "Train"),
    ):
        with pytest.raises(DatasetError) as excinfo:
            open_dataset(dataset, val_fraction=0.2, seed=0, datasets_root=root, **LIMITS)
        message = str(excinfo.value)
        assert f"{linked}: links outside the datasets root" in message
        assert "secret-" not in message


def test_links_that_stay_inside_the_root_are_followed(tmp_path):
    """An images/ + labels/ pair symlinked to another dataset under the same root trains."""
    root = tmp_path / "datasets"
    shared = labelled_folder(root / "shared", images=2)
    alias = root / "alias"
    alias.mkdir()
    os.symlink(shared / "images", alias / "images")
    os.symlink(shared / "labels", alias / "labels")

    data = open_dataset(alias, val_fraction=0.5, seed=0, datasets_root=root, **LIMITS)

    assert len(data.train) + len(data.val) == 2
