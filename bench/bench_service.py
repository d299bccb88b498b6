"""Service overhead: the same images through `segd up` and through a warm in-process loop.

  loop       one process, model loaded once, `pipeline.segment_file` per image (what
             `segd segment a.jpg b.jpg ...` runs): the compute floor
  service    `segd up` (private Redis, watcher, one worker): 20 images renamed into the inbox at
             once, timed until the 20th manifest appears
  latency    single images dropped one at a time: drop → manifest, minus the compute the manifest
             reports (decode + segment + write): what the watcher, Redis and RQ add

Random-weights SAM2.1 tiny (no download here), default sampling, 1024-px model input.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.bench_segment import DATA, SHIPPED_CONFIG, machine_name
from common.config import load_config
from worker.image.pipeline import segment_file
from worker.image.segmenter import Segmenter
from worker.models.sam import SamModel

ENV = {
    "SEGD_MODEL__SIZE": "tiny",
    "SEGD_MODEL__CHECKPOINT": "random",
    "SEGD_WATCHER__SETTLE_S": "0.1",
}


def make_images(folder: Path, count: int) -> list[Path]:
    """`count` distinct JPEGs (the sample photos with one pixel changed each)."""
    sources = [
        np.asarray(Image.open(DATA / n).convert("RGB")) for n in ("groceries.jpg", "truck.jpg")
    ]
    paths = []
    for i in range(count):
        pixels = sources[i % len(sources)].copy()
        pixels[0, i % pixels.shape[1]] ^= 0xFF
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
        path = folder / f"img{i:03d}.jpg"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def bench_loop(images: list[Path], out: Path) -> float:
    config = load_config(SHIPPED_CONFIG, ENV)
    segmenter = Segmenter(SamModel.load(config), config)
    segment_file(segmenter, images[0], None, out / "warmup")  # first call allocates; not timed
    start = time.perf_counter()
    for image in images:
        segment_file(segmenter, image, None, out)
    return time.perf_counter() - start


def _wait(path: Path, timeout_s: float = 600) -> float:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return time.perf_counter()


def bench_service(
    images: list[Path], site: Path, singles: list[Path], warmup: Path
) -> tuple[float, list[float]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")} | ENV
    up = subprocess.Popen(
        [sys.executable, "-m", "segd", "up"],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        inbox, outbox, scratch = site / "inbox", site / "outbox", site / "scratch"
        scratch.mkdir(parents=True)
        # Warm-up: the first result means Redis, watcher and worker (model loaded) are all up.
        warm = shutil.copy(warmup, scratch / "warmup.jpg")
        while not inbox.is_dir():
            time.sleep(0.05)
        os.rename(warm, inbox / "warmup.jpg")
        _wait(outbox / "warmup" / "manifest.json")

        staged = [shutil.copy(image, scratch / image.name) for image in images]
        start = time.perf_counter()
        for path in staged:
            os.rename(path, inbox / Path(path).name)
        for image in images:
            end = _wait(outbox / image.stem / "manifest.json")
        batch_s = end - start

        overheads = []
        for image in singles:
            single = Path(shutil.copy(image, scratch / f"single-{image.name}"))
            dropped = time.perf_counter()
            os.rename(single, inbox / f"single-{image.name}")
            arrived = _wait(outbox / f"single-{image.stem}" / "manifest.json")
            manifest = json.loads((outbox / f"single-{image.stem}" / "manifest.json").read_text())
            timings = manifest["timings_s"]
            compute = timings["total_before_write"] + timings["write"]
            overheads.append(arrived - dropped - compute)
        return batch_s, overheads
    finally:
        up.send_signal(2)
        up.wait(timeout=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--singles", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = make_images(root / "images", args.images + args.singles + 1)
        batch, singles, warmup = images[: args.images], images[args.images : -1], images[-1]
        loop_s = bench_loop(batch, root / "loop-out")
        (root / "site").mkdir()
        service_s, overheads = bench_service(batch, root / "site", singles, warmup)
    n = len(batch)
    print(
        f"\nsegd service overhead — {machine_name('auto')}, SAM2.1 tiny random weights, {n} images\n"
    )
    print("| flow | seconds | images/s | overhead vs loop |")
    print("|---|---|---|---|")
    print(f"| warm in-process loop (segd segment) | {loop_s:.1f} | {n / loop_s:.3f} | — |")
    print(
        f"| segd up (watcher + Redis + worker) | {service_s:.1f} | {n / service_s:.3f} | {100 * (service_s / loop_s - 1):+.1f}% |"
    )
    print(
        f"\ndrop-to-result latency beyond compute (inotify, {len(overheads)} single drops): "
        f"median {statistics.median(overheads):.3f} s, max {max(overheads):.3f} s"
    )


if __name__ == "__main__":
    main()
