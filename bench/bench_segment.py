"""Single-image segmentation throughput: segd against the seed tutorial's flow, same model and points.

For each model size, on the sample images resized to 1024 px on the long side, 30 points:

  encoder          the image encoder alone (the floor for any flow)
  enc+dec          encoder + the decoder for the 30 prompts at low resolution, in segd's decoder
                   batches (the ceiling for those prompts: no upsampling, no stitching)
  seed             the seed's flow: SAM2ImagePredictor.predict (3 full-size masks per point),
                   first mask of three, Python stitching loop over full-size arrays
  segd random      segd with the same 30 points (best mask of three, low-res filtering,
                   upsampling only kept masks, vectorised stitching)
  segd coverage    segd's coverage mode with a budget of 30 points

Weights are random (no download here), so this measures speed and coverage, not mask quality.
Coverage = fraction of the region's pixels given a segment id. "post" = segd's share of time
after the decoder (upsampling + stitching + bboxes). Writing the five result files is timed
separately ("write").
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.seed_flow import seed_segment
from common.config import load_config
from worker.image import sampling
from worker.image.outputs import write_result
from worker.image.segmenter import Segmenter
from worker.models.sam import SamModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SHIPPED_CONFIG = ROOT / "config.yaml"  # the defaults, explicitly (not whatever ./config.yaml holds)
IMAGES = [
    ("labpics", "labpics_sample_image.jpg", "labpics_sample_region_mask.png"),
    ("groceries", "groceries.jpg", None),
    ("truck", "truck.jpg", None),
]


def load_images(long_side: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, (H, W, 3) uint8 RGB, (H, W) bool region) with the long side resized to `long_side`."""
    out = []
    for name, image_file, mask_file in IMAGES:
        decoded = cv2.imread(str(DATA / image_file))
        assert decoded is not None, f"cannot read {DATA / image_file}"
        image = decoded[:, :, ::-1]
        scale = long_side / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        if mask_file:
            region = (
                cv2.resize(
                    np.asarray(cv2.imread(str(DATA / mask_file), cv2.IMREAD_GRAYSCALE)),
                    size,
                    interpolation=cv2.INTER_NEAREST,
                )
                > 0
            )
        else:
            region = np.ones(image.shape[:2], bool)
        out.append((name, image, region))
    return out


def timed_interleaved(variants: dict, repeats: int, sync) -> dict[str, tuple[float, object]]:
    """Median wall time per variant and its last result. Each variant runs once to warm up; then
    the variants take turns, `repeats` rounds, so slow drifts of the machine hit all alike."""
    results = {name: fn() for name, fn in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            start = time.perf_counter()
            results[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name in variants}


def decode_all(model, features, points_xy: torch.Tensor) -> list:
    """The decoder alone for all prompts, in the model's decoder batches (as segd runs it)."""
    step = model.decoder_batch
    return [
        model.decode(features, 0, points_xy[i : i + step]) for i in range(0, len(points_xy), step)
    ]


def bench_size(size: str, images, repeats: int, points: int, device: str) -> list[dict]:
    env = {
        "SEGD_MODEL__SIZE": size,
        "SEGD_MODEL__CHECKPOINT": "random",
        "SEGD_MODEL__DEVICE": device,
        "SEGD_SAMPLING__POINTS": str(points),
    }
    model = SamModel.load(load_config(SHIPPED_CONFIG, env))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    predictor = model.image_predictor()
    segd_random = Segmenter(
        model, load_config(SHIPPED_CONFIG, {**env, "SEGD_SAMPLING__MODE": "random"})
    )
    segd_coverage = Segmenter(
        model, load_config(SHIPPED_CONFIG, {**env, "SEGD_SAMPLING__MODE": "coverage"})
    )
    return [
        bench_image(
            size,
            name,
            image,
            region,
            model,
            predictor,
            segd_random,
            segd_coverage,
            repeats,
            points,
            sync,
        )
        for name, image, region in images
    ]


def bench_image(
    size, name, image, region, model, predictor, segd_random, segd_coverage, repeats, points, sync
):
    """One table row: every flow on one image, interleaved."""
    autocast = model.autocast()
    pts = sampling.random_points(region, points, seed=0)  # the same points for seed and segd
    pts_t = torch.from_numpy(pts)
    tmp = tempfile.TemporaryDirectory()
    measured = timed_interleaved(
        {
            "encoder": lambda: model.encode([image]),
            "enc+dec": lambda: decode_all(model, model.encode([image]), pts_t),
            "seed": lambda: seed_segment(predictor, image, pts, autocast),
            "random": lambda: segd_random.segment(image, region),
            "coverage": lambda: segd_coverage.segment(image, region),
        },
        repeats,
        sync,
    )
    res_rand, res_cov, seed_map = (
        measured["random"][1],
        measured["coverage"][1],
        measured["seed"][1],
    )
    write = timed_interleaved(
        {
            "write": lambda: write_result(
                Path(tmp.name) / name, image, res_rand, {}, segd_random.config.outputs
            )
        },
        repeats,
        sync,
    )
    tmp.cleanup()
    area = region.sum()
    return {
        "size": size,
        "image": f"{name} {image.shape[1]}x{image.shape[0]}",
        **{key: measured[key][0] for key in ("encoder", "enc+dec", "seed", "random", "coverage")},
        "seed_cov": float(((seed_map > 0) & region).sum() / area),
        "random_cov": res_rand.coverage,
        "random_post": _post(res_rand),
        "coverage_cov": res_cov.coverage,
        "coverage_points": res_cov.points_used,
        "coverage_post": _post(res_cov),
        "write": write["write"][0],
    }


def _post(result) -> float:
    """Share of segd's time after the decoder (upsampling + stitching + boxes)."""
    timings = result.timings_s
    return (timings["upsample"] + timings["stitch"]) / sum(timings.values())


def print_table(rows: list[dict], machine: str) -> None:
    print(f"\nsegd single-image benchmark — {machine}")
    print("seconds per image (median); images/s in brackets; cov = region coverage reached\n")
    head = (
        "| model | image | encoder | enc+dec (ceiling) | seed flow | segd random | "
        "segd coverage | random vs seed | coverage vs seed | post-decoder share | write |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        print(
            f"| {r['size']} | {r['image']} | {r['encoder']:.2f} | {r['enc+dec']:.2f} | "
            f"{r['seed']:.2f} ({1 / r['seed']:.2f}/s, cov {r['seed_cov']:.2f}) | "
            f"{r['random']:.2f} ({1 / r['random']:.2f}/s, cov {r['random_cov']:.2f}) | "
            f"{r['coverage']:.2f} ({1 / r['coverage']:.2f}/s, cov {r['coverage_cov']:.2f}, "
            f"{r['coverage_points']} pts) | "
            f"{r['seed'] / r['random']:.2f}x | {r['seed'] / r['coverage']:.2f}x | "
            f"{100 * r['random_post']:.1f}% / {100 * r['coverage_post']:.1f}% | {r['write']:.3f} |"
        )


def machine_name(device: str) -> str:
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads "
        f"(torch {torch.__version__})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--long-side", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    images = load_images(args.long_side)
    rows = []
    for size in args.sizes.split(","):
        rows += bench_size(size, images, args.repeats, args.points, args.device)
    print_table(rows, machine_name(args.device))


if __name__ == "__main__":
    main()
