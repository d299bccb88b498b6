"""RQ job entry points. Orchestration only: find the claim, run the pipeline, move the claim
(`segment`, `segment_video`), or hand a labelled folder to a training run (`train`).

The functions here are the only ones segd workers will run (see `common.queues.ALLOWED_CALLABLES`);
their arguments are JSON values and are checked before use (job ids and file names only, never
paths). The model lives in a process-wide `Runtime`, loaded once and reloaded between jobs when
`models/current` names another version.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from redis.exceptions import RedisError
from rq import get_current_job

from common import attempts, registry, state
from common.config import Config, load_config
from common.errors import BadInput, SegdError
from common.names import shown
from worker import claimed, prefetch
from worker.failures import on_unexpected
from worker.image import placement

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
        from worker.image.segmenter import Segmenter
        from worker.models.sam import SamModel  # deferred: torch and sam2 load only in workers

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
        from worker.video.tracker import Tracker

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


def segment(job_id: str, image: str, mask: str | None = None) -> dict:
    """Segment the claimed image of job `job_id` and publish outbox/<folder>/<stem>/ (the claim's
    inbox folder, mirrored; see worker.image.placement for names already taken).

    A bad input ends in state/failed/<job_id>/ at once (retrying cannot help); an unexpected
    error is retried by RQ (transient trouble with back-off, see worker.failures) and, after the
    last attempt, ends there too with its traceback; an input the worker died on more than
    `worker.retries` times ends there without running again.
    """
    from worker.image.pipeline import segment_file  # deferred: the trainer process stays torch-free

    rt = runtime()
    cfg = rt.config
    _check_names(job_id, image, mask)  # untrusted arguments: before any file is touched
    overlap = prefetch.prefetcher()
    overlap.settle()  # the model may be reloaded next: never under a running prefetch
    segmenter = rt.segmenter()  # first: the claim is filed under the version that runs
    job = get_current_job()
    started = claimed.start(
        cfg, job_id, rt.model_version or registry.BASE, _worker_name(job), _dead_writes(cfg)
    )
    if isinstance(started, dict):
        return started
    job_id, claim_dir, claim = started.job_id, started.folder, started.claim
    image_path = state.safe_member(claim_dir, image)
    if image_path is None:
        raise BadInput(claim_dir, f"the claim names no usable input file ({image!r})")
    mask_path = state.safe_member(claim_dir, mask)
    try:
        prepared, segmenter = overlap.take(job_id, image_path, mask_path, rt.segmenter)
        folder = segment_file(
            segmenter,
            image_path,
            mask_path,
            cfg.paths.outbox,
            job_id=job_id,
            claim_seq=claim.seq,
            folder=claim.folder,
            expected_sha256=(claim.image_sha256, claim.mask_sha256),
            # The next queued image is decoded and segmented while this one is written.
            prepared=prepared,
            before_write=(
                (lambda: overlap.start_next(job.connection, cfg, segmenter))
                if job is not None and cfg.worker.prefetch
                else None
            ),
        )
    except BadInput as exc:
        state.fail(cfg.paths.state, job_id, exc.reason)
        log.warning("failed %s: %s", shown(image), exc.reason)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        _ended_with_error(cfg, job, job_id, claim_dir, shown(image), exc)
        raise
    state.finish(cfg.paths.state, job_id, model_version=rt.model_version)
    return {"status": "done", "result": str(folder), "job_id": job_id}


def _dead_writes(cfg: Config) -> Callable[[state.Claim], None]:
    """What `claimed.start` calls for a claim whose earlier runs died: remove the result folders
    they were writing (hidden temp folders in the outbox, up to a whole video's frames)."""

    def remove(claim: state.Claim) -> None:
        removed = placement.remove_dead_temps(Path(cfg.paths.outbox), claim.folder, claim.seq)
        if removed:
            log.info(
                "%s: removed %d half-written result folder(s) of a run that died (%s)",
                shown(claim.image),
                len(removed),
                ", ".join(removed),
            )

    return remove


def _check_names(job_id: str, image: str, mask: str | None) -> None:
    """ValueError for a job id that is not one, or a file name with a separator."""
    claim_dir = state.folder(".", state.CLAIMED, job_id)
    state.safe_member(claim_dir, image)
    state.safe_member(claim_dir, mask)


def _worker_name(job) -> str:
    return (job.worker_name if job is not None else None) or "local"


def _ended_with_error(
    cfg: Config, job, job_id: str, claim_dir: Path, name: str, exc: Exception
) -> None:
    """An unexpected error (not a death of the worker): RQ retries it, transient trouble with
    back-off (worker.failures), or the input ends in state/failed/ with the traceback. A run
    that is retried is ended in the claim's attempts, so it never counts as a death."""
    if on_unexpected(cfg, job, job_id, name, exc):
        attempts.end(claim_dir)


class _MetaReporter:
    """Training progress into the job's meta (what `segd train --follow` and `segd status`
    show), saved at most once a second and at every phase change or validation."""

    def __init__(self, job, interval_s: float = 1.0):
        self.job, self.interval_s, self._saved = job, interval_s, 0.0
        self._last: dict[str, object] = {}

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
    from worker.training.run import run_training  # deferred: torch loads only in the trainer's runs

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
    its objects through the video and publish outbox/<folder>/<stem>/. Progress goes to the job's meta.

    Failures end as for images: a bad input in state/failed/<job_id>/ at once, an unexpected error
    there after RQ's last retry, an input the worker died on too often without running again.
    """
    from worker.video.pipeline import segment_video_file

    prefetch.prefetcher().drain_all()  # the model and the memory are this job's alone
    rt = runtime()
    cfg = rt.config
    _check_names(job_id, video, mask)  # untrusted arguments: before any file is touched
    tracker = rt.tracker()  # first: the claim is filed under the version that runs
    job = get_current_job()
    started = claimed.start(
        cfg, job_id, rt.model_version or registry.BASE, _worker_name(job), _dead_writes(cfg)
    )
    if isinstance(started, dict):
        return started
    job_id, claim_dir, claim = started.job_id, started.folder, started.claim
    video_path = state.safe_member(claim_dir, video)
    if video_path is None:
        raise BadInput(claim_dir, f"the claim names no usable input file ({video!r})")
    mask_path = state.safe_member(claim_dir, mask)
    try:
        claimed.check_unchanged(video_path, claim.image_sha256)
        if mask_path is not None:
            claimed.check_unchanged(mask_path, claim.mask_sha256)
        folder = segment_video_file(
            tracker,
            video_path,
            mask_path,
            cfg.paths.outbox,
            job_id=job_id,
            claim_seq=claim.seq,
            progress=_report_progress(job),
            folder=claim.folder,
        )
    except BadInput as exc:
        reason = exc.reason
        if Path(exc.path) != video_path:  # a frame inside a folder, or the mask: say which
            reason = f"{Path(exc.path).relative_to(claim_dir)}: {exc.reason}"
        state.fail(cfg.paths.state, job_id, reason)
        log.warning("failed %s: %s", shown(video), exc)
        return {"status": "failed", "reason": str(exc)}
    except Exception as exc:
        _ended_with_error(cfg, job, job_id, claim_dir, shown(video), exc)
        raise
    state.finish(cfg.paths.state, job_id, model_version=rt.model_version)
    return {"status": "done", "result": str(folder), "job_id": job_id}
