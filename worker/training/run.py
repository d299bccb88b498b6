"""A training run from a dataset name to a published (and maybe promoted) model version.

    run_training(config, "labpics", {"steps": 200}, run_id, report)

1. resolves the dataset under `training.datasets_root` and checks every file (all problems at
   once, before any training);
2. loads the starting model (`training.base`: the current version, "base" or a version);
3. trains it (`worker.training.loop.Trainer`) in `<models>/.runs/<run_id>/`, where a crashed run
   finds its checkpoint and resumes (the same run id: RQ's retry of the job, or `--run`);
4. writes `<models>/<version>/` (weights in the official format + card.json) in one rename;
5. makes it current when `training.promote` says so: `if_better` compares its validation mIoU
   with the current model's on the same validation set (measured again if another version was
   promoted meanwhile). Workers pick the new current model up between jobs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import torch

from common import registry
from common.config import Config, training_settings
from common.errors import ModelError
from worker.models.sam import SamModel
from worker.training import datasets
from worker.training.evaluation import evaluate
from worker.training.loop import Trainer

log = logging.getLogger("segd.training")

RUNS_DIR = ".runs"
RUN_FILE = "run.json"


def _base_version(models_dir: Path, base: str) -> str:
    if base == "current":
        return registry.current_version(models_dir)
    if base != registry.BASE:
        registry.weights_path(models_dir, base)  # ModelError when it does not exist
    return base


def _hardware(model: SamModel) -> dict:
    info = {
        "host": socket.gethostname(),
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if model.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(model.device)
    return info


def _run_info(run_dir: Path, dataset: datasets.Dataset, base_version: str) -> dict:
    """The run's identity, fixed at its first start so a resumed run keeps its version name."""
    path = run_dir / RUN_FILE
    if path.is_file():
        info = json.loads(path.read_text())
        if info["fingerprint"] != dataset.fingerprint:
            raise ModelError(
                f"{dataset.root}: the dataset changed since run {run_dir.name} started; "
                "start a new run (or restore the files)"
            )
        return info
    run_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "version": f"{datasets.safe_name(dataset.name)}-{time.strftime('%Y%m%d-%H%M%S')}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base_version": base_version,
        "fingerprint": dataset.fingerprint,
    }
    path.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _decide(policy: str, best: float, current_score: float) -> tuple[bool, str]:
    if policy == "always":
        return True, "training.promote = always"
    if policy == "never":
        return False, "training.promote = never (use `segd models promote`)"
    if best > current_score:
        return True, f"validation mIoU {best:.4f} > current model's {current_score:.4f}"
    return (
        False,
        f"validation mIoU {best:.4f} does not beat the current model's {current_score:.4f}",
    )


def run_training(
    config: Config,
    dataset: str,
    options: dict,
    run_id: str,
    report: Callable[[dict], None] = lambda info: None,
) -> dict:
    """Train, publish and maybe promote; returns the summary a job stores as its result."""
    started = time.perf_counter()
    settings = training_settings(config, options)
    config = config.model_copy(update={"training": settings})
    models_dir = Path(config.paths.models)

    report({"phase": "checking data"})
    path = datasets.resolve(dataset, settings.datasets_root)
    data = datasets.open_dataset(
        path,
        val_fraction=settings.val_fraction,
        seed=settings.seed,
        max_bytes=config.inputs.max_file_bytes,
        max_pixels=config.inputs.max_pixels,
        datasets_root=settings.datasets_root,
    )
    log.info(
        "%s: %d training and %d validation images (%s), %d instances",
        path,
        len(data.train),
        len(data.val),
        data.val_source,
        data.instances,
    )

    run_dir = models_dir / RUNS_DIR / run_id
    base_version = _base_version(models_dir, settings.base)
    info = _run_info(run_dir, data, base_version)
    report({"phase": "loading model", "version": info["version"]})
    model = SamModel.load_version(config, info["base_version"])
    outcome = Trainer(model, data, config, settings, run_dir).run(report)

    report({"phase": "publishing", "step": outcome.steps, "steps": settings.steps})
    current = registry.current_version(models_dir)
    if current == info["base_version"]:
        current_score = outcome.before
    else:  # another version became current meanwhile: compare with it on the same images
        current_model = SamModel.load_version(config, current)
        current_score = evaluate(
            current_model, config, data.val[: settings.val_max_images], _reader(config)
        )
        del current_model
    promote, reason = _decide(settings.promote, outcome.best, current_score)

    version = info["version"]
    published = registry.read_card(models_dir, version)
    if published and published.get("run") == run_id:  # a retry after a crash past publishing
        log.info("version %s was published by this run already", version)
        shutil.rmtree(run_dir, ignore_errors=True)
        return _summary(published, models_dir)
    staging = models_dir / f".tmp-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(outcome.best_weights, staging / registry.WEIGHTS_FILE)
    card = {
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run_id,
        "base": {
            "version": info["base_version"],
            "model": model.info.name,
            "checkpoint_sha256": model.info.checkpoint_sha256,
            "random_weights": model.info.random_weights,
        },
        "model": {
            "version": config.model.version,
            "size": config.model.size,
            "image_size": model.image_size,
        },
        "dataset": {
            "path": str(path),
            "layout": data.layout,
            "fingerprint": data.fingerprint,
            "train_images": len(data.train),
            "val_images": min(len(data.val), settings.val_max_images),
            "val_source": data.val_source,
            "instances": data.instances,
        },
        "settings": json.loads(settings.model_dump_json()),
        "steps": outcome.steps,
        "best_step": outcome.best_step,
        "stopped_early": outcome.stopped_early,
        "resumed_from_step": outcome.resumed_from,
        "validation": {
            "protocol": (
                f"segd's segmenter ({config.sampling.mode} sampling, {config.sampling.points} "
                "points, score-ordered stitching) on each validation image; mIoU = mean over "
                "ground-truth instances of the IoU with the best-matching segment"
            ),
            "miou_before": round(outcome.before, 6),
            "miou_after": round(outcome.best, 6),
            "history": outcome.history,
            "current_model": {"version": current, "miou": round(current_score, 6)},
        },
        "promoted": promote,
        "promotion_reason": reason,
        "duration_s": round(time.perf_counter() - started, 3),
        "train_seconds": round(outcome.train_seconds, 3),
        "images_per_s": round(outcome.images_per_s, 4),
        "hardware": {**_hardware(model), "peak_gpu_bytes": outcome.peak_gpu_bytes},
    }
    (staging / registry.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    registry.publish(models_dir, staging, version)
    if promote:
        registry.promote(models_dir, version, reason="training")
    shutil.rmtree(run_dir, ignore_errors=True)
    log.info("version %s: mIoU %.4f → %.4f; %s", version, outcome.before, outcome.best, reason)
    return _summary(card, models_dir)


def _summary(card: dict, models_dir: Path) -> dict:
    return {
        "version": card["version"],
        "promoted": card["promoted"],
        "reason": card["promotion_reason"],
        "miou_before": card["validation"]["miou_before"],
        "miou_after": card["validation"]["miou_after"],
        "steps": card["steps"],
        "path": str(models_dir / card["version"]),
    }


def _reader(config: Config):
    limits = config.inputs
    return lambda sample: datasets.read_sample(sample, limits.max_file_bytes, limits.max_pixels)
