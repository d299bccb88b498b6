"""Writes docs/images/result.png, the README's picture: one input and what segd writes for it.

`python docs/make_picture.py` (from the project root). No SAM2 weights can be downloaded where
segd is built, so the masks come from `bench.standin.OracleModel`, which answers each point
prompt with the true shape under it at SAM2's low resolution; everything after the model is
segd's real pipeline (`segment_file`): sampling, stitching in score order, the colour map and
the overlay, exactly as a worker writes them.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.standin import OracleModel  # noqa: E402
from common.config import load_config  # noqa: E402
from tests.synthetic import draw_scene  # noqa: E402
from worker.image.pipeline import segment_file  # noqa: E402
from worker.image.segmenter import Segmenter  # noqa: E402

SIZE = 384


def main() -> None:
    image, label = draw_scene(SIZE, 9, seed=11)
    config = load_config(
        None,
        {
            "SEGD_MODEL__CHECKPOINT": "random",
            "SEGD_SAMPLING__MODE": "grid",
            "SEGD_SAMPLING__POINTS": "64",
        },
    )
    segmenter = Segmenter(OracleModel(label, image_size=256), config)
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "scene.png"
        Image.fromarray(image).save(photo)
        result = segment_file(segmenter, photo, None, Path(tmp) / "outbox")
        overlay = np.asarray(Image.open(result / "overlay.jpg").convert("RGB"))
        color = np.asarray(Image.open(result / "color.png").convert("RGB"))
    gap = np.full((SIZE, 12, 3), 255, np.uint8)
    strip = np.concatenate([image, gap, overlay, gap, color], axis=1)
    labels = ("inbox/scene.png", "outbox/scene/overlay.jpg", "outbox/scene/color.png")
    canvas = np.full((SIZE + 34, strip.shape[1], 3), 255, np.uint8)
    canvas[34:] = strip
    for i, text in enumerate(labels):
        x = i * (SIZE + 12) + 6
        cv2.putText(
            canvas, text, (x, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (40, 40, 40), 1, cv2.LINE_AA
        )
    out = ROOT / "docs" / "images" / "result.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
