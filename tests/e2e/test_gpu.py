"""The service on a CUDA device (skipped without one): `segd up` segments an image and a short
video, a 5-step training run is published and picked up by the running worker, GPU memory is
back to its baseline after each job; bf16 index maps against fp32; box stitching on the device.

Random-weights SAM2.1 tiny at 256 px; run with `make test-gpu` (pytest -m gpu) on a GPU host."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import liveness, registry
from tests.conftest import tiny_config
from tests.service_helpers import Service
from tests.synthetic import draw_scene, labelled_folder

pytestmark = pytest.mark.gpu

CUDA = {"SEGD_MODEL__DEVICE": "cuda", "SEGD_VIDEO__MAX_FRAMES": "8"}
SLACK_BYTES = 32 * 2**20  # the caching allocator's rounding; a leaked 256-px job is far more


@pytest.fixture
def gpu_site(tmp_path, tiny_checkpoint):
    site = Service(
        tmp_path / "site",
        checkpoint=tiny_checkpoint,
        SEGD_TRAINING__DATASETS_ROOT=str(tmp_path / "datasets"),
        SEGD_TRAINING__BATCH_IMAGES="1",
        SEGD_TRAINING__PROMOTE="always",  # 5 steps need not beat the base model
        **CUDA,
    )
    site.datasets = tmp_path / "datasets"
    site.start_redis()
    yield site
    site.close()


def _worker_info(site: Service) -> dict:
    client = site.redis_client()
    keys = client.keys(liveness.INFO_KEY.format(name="*"))
    return json.loads(client.get(keys[0])) if keys else {}


def test_the_worker_on_cuda_segments_an_image_and_a_video_and_frees_gpu_memory(gpu_site, data_dir):
    """On CUDA: an image and a short video are segmented (bf16, on the device), and after each
    job the worker's allocated GPU memory is back to what it held with the model loaded."""
    site = gpu_site
    site.start("worker")
    site.start("watch")
    site.wait_for(lambda: "gpu_memory_allocated_bytes" in _worker_info(site), what="worker info")
    info = _worker_info(site)
    assert info["device"].startswith("cuda") and info["dtype"] == "bfloat16"
    baseline = info["gpu_memory_allocated_bytes"]

    shutil.copy(data_dir / "truck.jpg", site.inbox / "truck.jpg")
    site.wait_for(lambda: "truck" in site.results(), timeout=300, what="the image result")
    manifest = site.results()["truck"]
    assert manifest["model"]["device"].startswith("cuda") and manifest["result"]["segments"] >= 1
    time.sleep(1.0)  # the worker publishes its info right after the job
    assert _worker_info(site)["gpu_memory_allocated_bytes"] <= baseline + SLACK_BYTES

    shutil.copy(data_dir / "bedroom.mp4", site.inbox / "bedroom.mp4")
    site.wait_for(lambda: "bedroom" in site.results(), timeout=600, what="the video result")
    assert site.results()["bedroom"]["input"]["frames"] == 8
    time.sleep(1.0)
    after_video = _worker_info(site)["gpu_memory_allocated_bytes"]
    # The video predictor shares the image model's weights; its per-video state is released.
    assert after_video <= baseline + 4 * SLACK_BYTES


def test_a_five_step_training_run_on_cuda_is_published_and_picked_up(gpu_site):
    """`segd train --steps 5` on CUDA: the version becomes current and the running worker
    segments the next image with it, without a restart."""
    site = gpu_site
    labelled_folder(site.datasets / "shapes", images=1, size=256, shapes=1, seed=3)
    site.start("worker")
    site.start("watch")
    site.start("trainer")
    done = subprocess.run(
        [sys.executable, "-m", "segd", "train", "shapes", "--steps", "5", "--follow"],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    models = Path(site.env["SEGD_PATHS__MODELS"])
    version = registry.current_version(models)
    assert version != registry.BASE
    Image.fromarray(draw_scene(256, 2, seed=4)[0]).save(site.inbox / "after.png")
    site.wait_for(lambda: "after" in site.results(), timeout=300, what="the result")
    assert site.results()["after"]["model"]["model_version"] == version
    assert site.procs["worker"].poll() is None


def _iou_matched(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over a's segments of the best IoU with any of b's segments."""
    ious = []
    for i in np.unique(a[a > 0]):
        mask = a == i
        best = 0.0
        for j in np.unique(b[mask]):
            if j:
                other = b == j
                best = max(best, float((mask & other).sum() / (mask | other).sum()))
        ious.append(best)
    return float(np.mean(ious)) if ious else 1.0


def test_bf16_index_maps_agree_with_float32_weights(tmp_path, tiny_checkpoint, data_dir):
    """bf16 (autocast, the CUDA default) against fp32 on the same device and points: the index
    maps' mean matched IoU is reported and high."""
    from worker.image import decode
    from worker.image.segmenter import Segmenter
    from worker.models.sam import SamModel

    image = decode.decode_image(decode.read_file(data_dir / "groceries.jpg", 2**30), 10**8)
    env = {"SEGD_MODEL__CHECKPOINT": str(tiny_checkpoint), **CUDA}
    maps = {}
    for dtype in ("bfloat16", "float32"):
        config = tiny_config(tmp_path, **env, SEGD_MODEL__DTYPE=dtype)
        maps[dtype] = Segmenter(SamModel.load(config), config).segment(image).index_map
    iou = _iou_matched(maps["bfloat16"], maps["float32"])
    print(f"bf16 vs fp32: mean matched IoU {iou:.4f}")
    assert iou >= 0.9


def test_upsampling_and_stitching_on_cuda_equal_the_full_size_path_on_the_device():
    """On CUDA the boxed path gives the device's full-size upsample + stitch map, bit for bit,
    and the map stays on the device until the end."""
    from worker.image.boxes import stitch_boxes, upsample_in_boxes
    from worker.image.prediction import upsample_masks
    from worker.image.stitching import stitch

    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn((30, 1, 34, 34), generator=gen) * 4 - 3
    logits = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bicubic")[:, 0]
    logits = logits.contiguous().to(device)
    scores = torch.rand(30, generator=gen).to(device)
    hw = (3024, 4032)
    expected = stitch(upsample_masks(logits, hw, 0.0), scores, min_area=10)
    got = stitch_boxes(
        upsample_in_boxes(logits, hw, 0.0),
        scores,
        hw,
        None,
        overlap_threshold=0.15,
        min_area=10,
        device=device,
    )
    assert got.index_map.device.type == "cuda"
    assert torch.equal(got.index_map, expected.index_map)
    assert got.source.tolist() == expected.source.tolist()
