"""Video tracking: segd's streaming tracker against a plain loop over SAM2's own video predictor.

Speed: the first `--frames` frames of bedroom.mp4 (960x540) as a JPEG folder. Both flows track the
same objects (frame 0 segmented once with segd's Segmenter, re-seeding off) with the same
predictor and weights:

  sam2 loop   init_state(folder) (decodes every frame up front) + add_new_mask per object +
              `for ... in propagate_in_video(state)`, masks at video size
  segd        Tracker.track over the streamed folder (frame 0 seeded by the same segmentation),
              index map per frame; nothing written

Memory: resident memory of a fresh child process tracking a synthetic 96x96 video of moving
squares for 60 and for 600 frames, segd against SAM2's loop (its init_state holds every frame at
model resolution, so its peak grows with the video): RSS once the model is loaded, then the peak
while tracking (Linux: the peak counter is reset after loading), with the growth over the first in
brackets.

Weights are random (nothing can be downloaded here): this measures speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import gc
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from common.config import load_config
from worker.image.segmenter import Segmenter
from worker.models.sam import SamModel
from worker.video.frames import open_video
from worker.video.tracker import Tracker

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHIPPED_CONFIG = ROOT / "config.yaml"


def bench_config(size: str, image_size: int, frames: int, points: int):
    env = {
        "SEGD_MODEL__SIZE": size,
        "SEGD_MODEL__IMAGE_SIZE": str(image_size),
        "SEGD_MODEL__CHECKPOINT": "random",
        "SEGD_MODEL__DEVICE": "auto",
        "SEGD_SAMPLING__POINTS": str(points),
        "SEGD_VIDEO__RESEED_EVERY": "0",
        "SEGD_VIDEO__MAX_FRAMES": str(frames),
        "SEGD_PATHS__MODELS": tempfile.gettempdir(),
    }
    return load_config(SHIPPED_CONFIG, environ=env)


def bedroom_folder(folder: Path, frames: int) -> Path:
    capture = cv2.VideoCapture(str(DATA / "bedroom.mp4"))
    for i in range(frames):
        ok, bgr = capture.read()
        if not ok:
            break
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), bgr)
    return folder


def synthetic_folder(folder: Path, frames: int, size: int = 96) -> Path:
    """`frames` JPEGs of three squares bouncing over a gradient."""
    base = np.linspace(40, 120, size, dtype=np.uint8)[None, :, None].repeat(size, 0).repeat(3, 2)
    for i in range(frames):
        frame = base.copy()
        for k, color in enumerate(((230, 60, 60), (60, 230, 60), (60, 60, 230))):
            x = int((size - 20) * (0.5 + 0.5 * np.sin(0.05 * i + 2 * k)))
            y = 10 + 28 * k
            frame[y : y + 18, x : x + 18] = color
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame)
    return folder


def run_sam2_loop(predictor, folder: Path, seeds) -> int:
    state = predictor.init_state(str(folder), offload_video_to_cpu=True)
    for segment in seeds.segments:
        predictor.add_new_mask(state, 0, segment.id, seeds.index_map == segment.id)
    count = 0
    for _t, _ids, masks in predictor.propagate_in_video(state):
        (masks > 0).any()
        count += 1
    return count


def run_segd(tracker: Tracker, folder: Path, config) -> int:
    return sum(1 for _ in tracker.track(open_video(folder, config).frames()))


def speed(args) -> list[str]:
    config = bench_config(args.size, args.image_size, args.frames, args.points)
    model = SamModel.load(config)
    predictor = model.video_predictor()
    segmenter = Segmenter(model, config)
    tracker = Tracker(segmenter, predictor, config)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = bedroom_folder(Path(tmp), args.frames)
        first = next(open_video(folder, config).frames())
        seeds = segmenter.segment(first)
        objects = len(seeds.segments)
        run_segd(tracker, folder, config)  # warm-up (allocator, caches)
        timings: dict[str, list[tuple[float, int]]] = {"sam2 loop": [], "segd": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            frames = run_sam2_loop(predictor, folder, seeds)
            timings["sam2 loop"].append((time.perf_counter() - start, frames))
            start = time.perf_counter()
            frames = run_segd(tracker, folder, config)
            timings["segd"].append((time.perf_counter() - start, frames))
    base = None
    for name, runs in timings.items():
        seconds = float(np.median([s for s, _ in runs]))
        frames = runs[0][1]
        fps = frames / seconds
        base = base or fps
        rows.append(
            f"| {name} | {args.size} {args.image_size}px | {frames} | {objects} | "
            f"{seconds:.1f} | {fps:.2f} | {fps / base:.2f}x |"
        )
    return rows


def _status_mib(field: str) -> float:
    """A `VmRSS`/`VmHWM` line of /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(flow: str, frames: int, size: str, image_size: int) -> None:
    """Run one flow in this (fresh) process; print its resident memory before tracking (model
    loaded, frames on disk) and its peak while tracking, in MiB.

    The peak counter is reset after the model is loaded (`5` to /proc/self/clear_refs), so the
    load's own transient peak (state dict + model) does not hide what tracking costs."""
    config = bench_config(size, image_size, frames, 8)
    model = SamModel.load(config)
    predictor = model.video_predictor()
    segmenter = Segmenter(model, config)
    with tempfile.TemporaryDirectory() as tmp:
        folder = synthetic_folder(Path(tmp), frames)
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_mib("VmRSS")
        start = time.perf_counter()
        if flow == "segd":
            done = run_segd(Tracker(segmenter, predictor, config), folder, config)
        else:
            first = next(open_video(folder, config).frames())
            done = run_sam2_loop(predictor, folder, segmenter.segment(first))
        seconds = time.perf_counter() - start
        peak = _status_mib("VmHWM")
    print(f"{flow} {done} {base:.0f} {peak:.0f} {seconds:.1f}")


def memory(args) -> list[str]:
    rows = []
    for flow in ("segd", "sam2 loop"):
        runs = {}
        for frames in (60, 600):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.bench_video",
                    "--child",
                    flow.replace(" ", "-"),
                    "--child-frames",
                    str(frames),
                    "--size",
                    args.size,
                    "--image-size",
                    str(args.memory_image_size),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            ).stdout
            # The child's last line: "<flow> <frames done> <base MiB> <peak MiB> <seconds>".
            done, base, peak, seconds = out.strip().splitlines()[-1].split()[-4:]
            if int(done) != frames:
                raise RuntimeError(f"{flow} tracked {done} of {frames} frames")
            runs[frames] = (float(base), float(peak), float(seconds))
        (base60, peak60, s60), (base600, peak600, s600) = runs[60], runs[600]
        rows.append(
            f"| {flow} | {args.size} {args.memory_image_size}px | {base60:.0f} | {peak60:.0f} "
            f"(+{peak60 - base60:.0f}) | {peak600:.0f} (+{peak600 - base600:.0f}) | "
            f"{peak600 / peak60:.2f}x | {s60:.0f} / {s600:.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--memory-image-size", type=int, default=256)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["segd", "sam2-loop"], help=argparse.SUPPRESS)
    parser.add_argument("--child-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child.replace("-", " "), args.child_frames, args.size, args.image_size)
        return
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# video tracking, {platform.machine()}, {device}, torch {torch.__version__}")
    print("| flow | model | frames | objects | seconds | frames/s | vs sam2 loop |")
    print("|---|---|---|---|---|---|---|")
    for row in speed(args):
        print(row, flush=True)
    if not args.skip_memory:
        print()
        print(
            "| flow | model | RSS before tracking (MiB) | peak RSS tracking 60 frames (MiB) "
            "| 600 frames (MiB) | peak 600 / 60 | seconds 60 / 600 |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in memory(args):
            print(row, flush=True)


if __name__ == "__main__":
    main()
