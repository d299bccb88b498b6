"""segd's own work per image, stage by stage, at camera resolution, with a model that costs nothing.

The stand-in (bench/standin.py) answers each point with the ground-truth instance under it at
SAM2's low resolution (S/4 square logits, S = 1024) over a synthetic instance map (Voronoi
cells); the image is the sample truck photo resized and saved as a JPEG. Everything timed is
segd's code on segd's real path (`pipeline.segment_file`):

  decode      read + decode the JPEG (Pillow, EXIF orientation)
  preprocess  the model input (resize, normalise): SamModel.preprocess
  sampling    coverage sampling, selection (less the stand-in's decoder pass, a table look-up
              and a copy of the answers, shown on its own row)
  upsample    kept masks to full size (in their boxes)
  stitch      score-ordered stitching (in boxes), ids, areas, bboxes
  files       index.png, color.png, overlay (blend + JPEG), RLEs, segments.json, publish
  own work    segment_file end to end less the stand-in's decoder pass (what a worker spends
              besides the two network passes)

Then the same images with SAM2.1 tiny (random weights; encoder and decoder timed apart), and
images/s of a worker on 1 MP images with a stand-in whose two passes take 100 ms of wall time
without the CPU (time.sleep, as a GPU would): one worker process, two worker processes
(a second `segd worker` on the same device), and the worker's own overlap (worker/prefetch.py:
the next image through the model and the one after it decoded while the last is written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import torch

from bench.bench_segment import DATA, SHIPPED_CONFIG
from bench.standin import OracleModel, SleepingOracle, voronoi_instances
from common.config import load_config
from worker.image import decode, encoding
from worker.image.outputs import color_png, palette, segments_document, write_result
from worker.image.pipeline import load, prepare, segment_file, write_prepared
from worker.image.segmenter import Segmenter

SIZES = {"1MP": (768, 1024), "12MP": (3024, 4032)}
ENV = {"SEGD_SAMPLING__POINTS": "64", "SEGD_MODEL__CHECKPOINT": "random"}


def make_image(folder: Path, hw: tuple[int, int]) -> Path:
    """The sample photo at (H, W), saved as a quality-92 JPEG."""
    image = cv2.imread(str(DATA / "truck.jpg"))
    assert image is not None, DATA / "truck.jpg"
    image = cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    path = folder / f"photo_{hw[1]}x{hw[0]}.jpg"
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def median_time(fn, repeats: int) -> tuple[float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def stages(segmenter: Segmenter, path: Path, out: Path, repeats: int) -> dict[str, float]:
    """Median seconds of each stage of segd's own work on one image, and of segment_file."""
    cfg = segmenter.config
    row: dict[str, float] = {}
    row["decode"], image = median_time(
        lambda: decode.decode_image(decode.read_file(path, 2**31), 10**9), repeats
    )
    row["preprocess"], _ = median_time(lambda: segmenter.model.preprocess([image]), repeats)
    model = segmenter.model
    features = model.encode([image])
    results, answering = [], []
    for _ in range(repeats + 1):
        before = model.decode_s
        results.append(segmenter.segment_encoded(features, 0))
        answering.append(model.decode_s - before)
    result = results[-1]
    # The stand-in's decoder pass (its look-up and copy of the answers) is a network pass, not
    # segd's work: it is taken out of "sampling" and "own work" and shown on its own row.
    row["sampling"] = statistics.median(
        r.timings_s["decode"] - a for r, a in zip(results[1:], answering[1:], strict=True)
    )
    row["stand-in decoder (not own work)"] = statistics.median(answering[1:])
    for key in ("upsample", "stitch"):
        row[key] = statistics.median(r.timings_s[key] for r in results[1:])
    level, ids = cfg.outputs.png_compression, result.index_map
    row["index.png"], _ = median_time(lambda: encoding.png_uint16(ids, level), repeats)
    row["color.png"], _ = median_time(lambda: color_png(ids, level), repeats)
    row["blend"], shown = median_time(
        lambda: encoding.blend_where(image, ids, palette(), cfg.outputs.overlay_alpha), repeats
    )
    row["overlay.jpg"], _ = median_time(
        lambda: encoding.jpeg_rgb(shown, cfg.outputs.jpeg_quality), repeats
    )
    row["rle+json"], _ = median_time(
        lambda: json.dumps(segments_document(result)).encode(), repeats
    )
    row["write all"], _ = median_time(
        lambda: write_result(out / "w", image, result, {}, cfg.outputs), repeats
    )
    segment_file(segmenter, path, None, out)  # warm-up
    own = []
    for _ in range(repeats):
        before, start = model.decode_s, time.perf_counter()
        segment_file(segmenter, path, None, out)
        own.append(time.perf_counter() - start - (model.decode_s - before))
    row["own work"] = statistics.median(own)
    row["segments"] = len(result.segments)
    return row


def oracle_rows(folder: Path, repeats: int) -> dict[str, dict]:
    rows = {}
    for name, hw in SIZES.items():
        path = make_image(folder, hw)
        config = load_config(SHIPPED_CONFIG, {**ENV, "SEGD_PATHS__OUTBOX": str(folder)})
        model = OracleModel(voronoi_instances(hw, 40, seed=1), image_size=1024)
        rows[name] = stages(Segmenter(model, config), path, folder / "out", repeats)
    return rows


def real_model_rows(folder: Path, repeats: int) -> dict[str, dict]:
    from worker.models.sam import SamModel

    config = load_config(SHIPPED_CONFIG, {**ENV, "SEGD_MODEL__SIZE": "tiny"})
    segmenter = Segmenter(SamModel.load(config), config)
    rows = {}
    for name, hw in SIZES.items():
        path = make_image(folder, hw)
        segment_file(segmenter, path, None, folder / "out")  # warm-up
        runs = []
        for _ in range(max(1, repeats // 2)):
            start = time.perf_counter()
            result_dir = segment_file(segmenter, path, None, folder / "out")
            total = time.perf_counter() - start
            timings = json.loads((result_dir / "manifest.json").read_text())["timings_s"]
            runs.append((total, timings))
        total, timings = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        segments = json.loads((result_dir / "manifest.json").read_text())["result"]["segments"]
        rows[name] = {
            "total": total,
            "encoder": timings["encode"],
            "decoder+sampling": timings["decode"],
            "own work": total - timings["encode"] - timings["decode"],
            "segments": segments,
        }
    return rows


# --- a worker's images/s with a model that sleeps ------------------------------------------


def _sleeping_segmenter(model_s: float) -> Segmenter:
    hw = SIZES["1MP"]
    config = load_config(SHIPPED_CONFIG, ENV)
    return Segmenter(SleepingOracle(voronoi_instances(hw, 40, seed=1), model_s=model_s), config)


def _serial(paths: list[Path], out: Path, model_s: float) -> None:
    segmenter = _sleeping_segmenter(model_s)
    for path in paths:
        segment_file(segmenter, path, None, out)


def _serial_when_ready(paths, out, model_s, ready, go) -> None:
    """A worker process: load, warm up, wait for the start signal, then segment `paths`."""
    segmenter = _sleeping_segmenter(model_s)
    segment_file(segmenter, paths[0], None, out / "warm")
    ready.wait()
    go.wait()
    for path in paths:
        segment_file(segmenter, path, None, out)


def _threaded(paths: list[Path], out: Path, model_s: float) -> None:
    """The worker's overlap (worker/prefetch.py): while one image's result is written, the
    next goes through the model in one thread and the one after it is read, decoded and
    preprocessed in another (the decode-ahead)."""
    segmenter = _sleeping_segmenter(model_s)
    with ThreadPoolExecutor(1) as model_pool, ThreadPoolExecutor(1) as load_pool:

        def ahead(i: int):
            return load_pool.submit(load, segmenter, paths[i], None, (None, None), True)

        def model(i: int, loading):
            return model_pool.submit(
                lambda: prepare(segmenter, paths[i], None, False, loaded=loading.result())
            )

        loads = {0: ahead(0)}
        nxt = model(0, loads.pop(0))
        if len(paths) > 1:
            loads[1] = ahead(1)
        for i, path in enumerate(paths):
            prepared = nxt.result()
            if i + 1 < len(paths):
                nxt = model(i + 1, loads.pop(i + 1))
            if i + 2 < len(paths):
                loads[i + 2] = ahead(i + 2)
            write_prepared(segmenter, prepared, out / path.stem)


def throughput(folder: Path, count: int, model_s: float) -> dict[str, float]:
    """Images/s on `count` 1 MP JPEGs: one process, two processes, one process with threads."""
    path = make_image(folder, SIZES["1MP"])
    paths = []
    for i in range(count):
        copy = folder / f"in{i:03d}.jpg"
        copy.write_bytes(path.read_bytes())
        paths.append(copy)
    out = folder / "tp"
    rates = {}
    _serial(paths[:2], out, model_s)  # warm the caches
    start = time.perf_counter()
    _serial(paths, out, model_s)
    rates["1 worker"] = count / (time.perf_counter() - start)
    ctx = multiprocessing.get_context("spawn")  # fork after OpenMP threads can hang
    ready, go = ctx.Barrier(3), ctx.Event()
    workers = [
        ctx.Process(target=_serial_when_ready, args=(paths[k::2], out, model_s, ready, go))
        for k in range(2)
    ]
    for w in workers:
        w.start()
    ready.wait()  # both processes loaded and warm: time only the images
    start = time.perf_counter()
    go.set()
    for w in workers:
        w.join()
    rates["2 worker processes (one device)"] = count / (time.perf_counter() - start)
    start = time.perf_counter()
    _threaded(paths, out, model_s)
    rates["1 worker with its prefetch thread"] = count / (time.perf_counter() - start)
    return rates


def print_tables(oracle: dict, real: dict | None, rates: dict, model_s: float) -> None:
    load = os.getloadavg()
    print(
        f"\nsegd pipeline benchmark — {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load {load[0]:.2f}/{load[1]:.2f}"
    )
    print("\nsegd's own work per image (stand-in model, median seconds)\n")
    keys = [k for k in next(iter(oracle.values())) if k != "segments"]
    print(
        "| stage | "
        + " | ".join(f"{n} ({r['segments']} segments)" for n, r in oracle.items())
        + " |"
    )
    print("|---|" + "---|" * len(oracle))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{r[key]:.4f}" for r in oracle.values()) + " |")
    if real:
        print("\nSAM2.1 tiny, random weights, 1024 px (median seconds)\n")
        print("| image | total | encoder | decoder + sampling | own work | segments |")
        print("|---|---|---|---|---|---|")
        for name, r in real.items():
            print(
                f"| {name} | {r['total']:.3f} | {r['encoder']:.3f} | "
                f"{r['decoder+sampling']:.3f} | {r['own work']:.3f} | {r['segments']} |"
            )
    own = oracle["1MP"]["own work"]
    target = 0.85 / max(model_s, own)
    print(
        f"\nimages/s on 1 MP, model passes {model_s * 1000:.0f} ms asleep (target >= {target:.2f})\n"
    )
    print("| worker | images/s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=24, help="images for the images/s rows")
    parser.add_argument("--model-s", type=float, default=0.1)
    parser.add_argument("--no-real-model", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        oracle = oracle_rows(folder, args.repeats)
        real = None if args.no_real_model else real_model_rows(folder, args.repeats)
        rates = throughput(folder, args.images, args.model_s)
    print_tables(oracle, real, rates, args.model_s)


if __name__ == "__main__":
    main()
