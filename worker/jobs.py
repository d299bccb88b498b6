"""RQ job entry points. Orchestration only: find the claim, run the pipeline, move the claim
(`segment`, `segment_video`), or hand a labelled folder to a training run (`train`).

The functions here are the only ones segd workers will run (see `worker.queues.ALLOWED_CALLABLES`);
their arguments are JSON values and are checked before use (job ids and file names only, never
paths). The model lives in a process-wide `Runtime`, loaded once and reloaded between jobs when
`models/current` names another version.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from pathlib import Path

from redis.exceptions import RedisError
from rq import get_current_job

from worker import registry, state
from worker.config import Config, load_config
from worker.errors import BadInput, SegdError

log = logging.getLogger("segd.worker")


class Runtime:
    """The worker process's resident state: the configuration and the loaded model."""

    def __init__(self, config: Config):
        self.config = config
        self._segmenter = None
        self._stamp = None
        self.model_version = None
        self._tracker = None

    def segmenter(self):
        """The Segmenter for the current model version; (re)loads it when `models/current` changed."""
        from worker.model import SamModel  # deferred: torch and sam2 load only in workers
        from worker.segmenter import Segmenter

        stamp = registry.current_stamp(self.config.paths.models)
        if self._segmenter is not None and stamp == self._stamp:
            return self._segmenter
        version = registry.current_version(self.config.paths.models)
        if self._segmenter is not None:
            log.info("model changed: loading version %s", version)
        model = SamModel.load_version(self.config, version)
        self._segmenter, self._stamp, self.model_version = (
            Segmenter(model, self.config),
            stamp,
            version,
        )
        log.info(
            "model %s (%s) on %s, %s%s",
            model.info.name,
            version,
            model.info.device,
            model.info.dtype,
            " — RANDOM WEIGHTS" if model.info.random_weights else "",
        )
        return self._segmenter

    def tracker(self):
        """The video Tracker for the current model: SAM2's video predictor built on the first
        video job from the resident model's weights (shared, not loaded again), rebuilt when the
        model is reloaded."""
        from worker.video import Tracker

        segmenter = self.segmenter()
        if self._tracker is None or self._tracker.segmenter is not segmenter:
            self._tracker = None  # let the old predictor go before building the new one
            self._tracker = Tracker(segmenter, segmenter.model.video_predictor(), self.config)
            log.info("video predictor ready (%s)", segmenter.model.info.name)
        return self._tracker


_runtime: Runtime | None = None


def install_runtime(runtime: Runtime) -> None:
    """Called by the worker process at start (before any job) so the model is loaded once."""
    global _runtime
    _runtime = runtime


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:  # a plain `rq worker` without segd's worker class: load on first use
        _runtime = Runtime(load_config())
    return _runtime


def _newer_result_exists(outbox: Path, stem: str, seq: int) -> bool:
    """True when outbox/<stem>/ already holds the result of a later claim (a later mask)."""
    try:
        manifest = json.loads((outbox / stem / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return int(manifest.get("claim_seq") or 0) > seq


def segment(job_id: str, image: str, mask: str | None = None) -> dict:
    """Segment the claimed image of job `job_id` and publish outbox/<stem>/.

    A bad input ends in state/failed/<job_id>/ at once (retrying cannot help); an unexpected
    error is retried by RQ and, after the last attempt, ends there too with its traceback.
    """
    from worker.pipeline import segment_file  # deferred: the trainer process stays torch-free

    rt = runtime()
    cfg = rt.config
    claim_dir = state.folder(cfg.paths.state, state.CLAIMED, job_id)
    if not claim_dir.is_dir():
        for kind in (state.DONE, state.FAILED):
            if state.folder(cfg.paths.state, kind, job_id).is_dir():
                return {"status": kind, "note": "already handled"}
        raise FileNotFoundError(f"job {job_id}: no claim in {claim_dir.parent}")
    claim = state.read_claim(claim_dir)
    image_path = state.safe_member(claim_dir, image)
    mask_path = state.safe_member(claim_dir, mask)
    try:
        if _newer_result_exists(Path(cfg.paths.outbox), claim.stem, claim.seq):
            log.info(
                "%s: a newer result (a later mask) is already published; not overwriting it", image
            )
            folder = Path(cfg.paths.outbox) / claim.stem
        else:
            folder = segment_file(
                rt.segmenter(),
                image_path,
                mask_path,
                cfg.paths.outbox,
                job_id=job_id,
                claim_seq=claim.seq,
            )
    except BadInput as exc:
        state.fail(cfg.paths.state, job_id, exc.reason)
        log.warning("failed %s: %s", image, exc.reason)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        job = get_current_job()
        if job is None or not job.retries_left:
            state.fail(
                cfg.paths.state,
                job_id,
                f"internal error: {type(exc).__name__}: {exc}",
                detail=traceback.format_exc(),
            )
        raise
    state.finish(cfg.paths.state, job_id)
    return {"status": "done", "result": str(folder)}


class _MetaReporter:
    """Training progress into the job's meta (what `segd train --follow` and `segd status`
    show), saved at most once a second and at every phase change or validation."""

    def __init__(self, job, interval_s: float = 1.0):
        self.job, self.interval_s, self._saved, self._last = job, interval_s, 0.0, {}

    def __call__(self, info: dict) -> None:
        if self.job is None:
            return
        changed = info.get("phase") != self._last.get("phase") or info.get(
            "val_miou"
        ) != self._last.get("val_miou")
        self.job.meta.update(info)
        self._last = dict(info)
        now = time.monotonic()
        if changed or now - self._saved >= self.interval_s:
            try:
                self.job.save_meta()
                self._saved = now
            except Exception as exc:  # progress is best effort; training goes on
                log.warning("could not save training progress: %s", exc)


def train(dataset: str, steps: int | None = None, run: str | None = None, **options) -> dict:
    """Fine-tune on the labelled folder `dataset` (under `training.datasets_root`).

    `steps` and the other options override `training.*` for this run (e.g. `batch_images`,
    `train_encoder`, `lr`, `promote`). `run` names the run's checkpoint folder (default: the
    job id), so a retried job resumes where it crashed. Bad datasets and options fail at once,
    without retries; the summary (version, promoted, mIoU before/after) is the job's result.
    """
    from worker.finetune import run_training  # deferred: torch loads only in the trainer's runs

    job = get_current_job()
    if steps is not None:
        options["steps"] = steps
    run_id = run or (job.id if job is not None else uuid.uuid4().hex)
    if not isinstance(run_id, str) or not registry.VERSION_PATTERN.fullmatch(run_id):
        raise ValueError(f"run {run_id!r}: use letters, digits, '.', '_' and '-' only")
    try:
        summary = run_training(runtime().config, dataset, options, run_id, _MetaReporter(job))
    except SegdError as exc:  # a bad dataset, option or model: retrying cannot help
        if job is not None:
            job.retries_left = 0
        log.error("training on %s failed: %s", dataset, exc)
        raise
    if job is not None:
        job.meta.update(phase="done", result=summary)
        job.save_meta()
    return summary


PROGRESS_META = "progress"  # job.meta key: {"frames_done": int, "frames_total": int | None}


def _report_progress(job, min_interval_s: float = 1.0):
    """A progress(frames_done, frames_total) callback that saves the job's meta at most once per
    `min_interval_s` (and always for the last frame); a no-op outside RQ."""
    last = [0.0]

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if job is None or (now - last[0] < min_interval_s and done != total):
            return
        last[0] = now
        job.meta[PROGRESS_META] = {"frames_done": done, "frames_total": total}
        try:
            job.save_meta()
        except RedisError as exc:  # progress is informative: never fail a job over it
            log.warning("could not save progress of job %s: %s", job.id, exc)

    return progress


def segment_video(job_id: str, video: str, mask: str | None = None) -> dict:
    """Segment the first frame of the claimed video (file or frame folder) of job `job_id`, track
    its objects through the video and publish outbox/<stem>/. Progress goes to the job's meta.

    Failures end as for images: a bad input in state/failed/<job_id>/ at once, an unexpected error
    there after RQ's last retry.
    """
    from worker.video_pipeline import segment_video_file

    rt = runtime()
    cfg = rt.config
    claim_dir = state.folder(cfg.paths.state, state.CLAIMED, job_id)
    if not claim_dir.is_dir():
        for kind in (state.DONE, state.FAILED):
            if state.folder(cfg.paths.state, kind, job_id).is_dir():
                return {"status": kind, "note": "already handled"}
        raise FileNotFoundError(f"job {job_id}: no claim in {claim_dir.parent}")
    claim = state.read_claim(claim_dir)
    video_path = state.safe_member(claim_dir, video)
    mask_path = state.safe_member(claim_dir, mask)
    job = get_current_job()
    try:
        if _newer_result_exists(Path(cfg.paths.outbox), claim.stem, claim.seq):
            log.info("%s: a newer result is already published; not overwriting it", video)
            folder = Path(cfg.paths.outbox) / claim.stem
        else:
            folder = segment_video_file(
                rt.tracker(),
                video_path,
                mask_path,
                cfg.paths.outbox,
                job_id=job_id,
                claim_seq=claim.seq,
                progress=_report_progress(job),
            )
    except BadInput as exc:
        reason = exc.reason
        if Path(exc.path) != video_path:  # a frame inside a folder, or the mask: say which
            reason = f"{Path(exc.path).relative_to(claim_dir)}: {exc.reason}"
        state.fail(cfg.paths.state, job_id, reason)
        log.warning("failed %s: %s", video, exc)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        if job is None or not job.retries_left:
            state.fail(
                cfg.paths.state,
                job_id,
                f"internal error: {type(exc).__name__}: {exc}",
                detail=traceback.format_exc(),
            )
        raise
    state.finish(cfg.paths.state, job_id)
    return {"status": "done", "result": str(folder)}
