"""Synthetic labelled folders for training tests: coloured shapes on a noisy background, with
their instance index PNGs (uint8 or uint16)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def draw_scene(size: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image (size, size, 3) uint8 RGB, label (size, size) int32) with `count` shapes."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 130, size=(size, size, 3)).astype(np.uint8)
    label = np.zeros((size, size), np.int32)
    for index in range(1, count + 1):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = np.zeros((size, size), np.uint8)
        cx, cy = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        ax, ay = (int(v) for v in rng.integers(size // 10, size // 5, 2))
        if index % 2:
            cv2.ellipse(shape, (cx, cy), (ax, ay), float(rng.integers(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(shape, (cx - ax, cy - ay), (cx + ax, cy + ay), 1, -1)
        image[shape > 0] = colour
        label[shape > 0] = index
    return image, label


def write_pair(folder: Path, name: str, image: np.ndarray, label: np.ndarray, uint16=False):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}.png")
    Image.fromarray(label.astype(np.uint16 if uint16 else np.uint8)).save(
        folder / "labels" / f"{name}.png"
    )


def labelled_folder(
    root: Path, images: int = 3, size: int = 128, shapes: int = 3, val: int = 0, seed: int = 0
) -> Path:
    """A dataset `root` with images/ + labels/ (and val/ when `val` > 0)."""
    for i in range(images):
        image, label = draw_scene(size, shapes, seed + i)
        write_pair(root, f"img{i:03d}", image, label, uint16=bool(i % 2))
    for i in range(val):
        image, label = draw_scene(size, shapes, seed + 1000 + i)
        write_pair(root / "val", f"val{i:03d}", image, label)
    return root
