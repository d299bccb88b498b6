"""The worker's overlap: while a job upsamples, stitches and writes its result, the next queued
image goes through the model (encoder, sampling, decoder) in a background thread, and the image
queued after it is read, decoded and preprocessed in a second one (the decode-ahead), so a
worker's own work hides behind the model: per image, the model's passes are what remains on the
critical path.

Why threads in the worker, not several workers per GPU: measured by `python -m bench pipeline`
(docs/benchmarks.md). Two worker processes on one device hold two copies of the model in GPU
memory and compete for the CPU; the threads reach the target rate with one.

It changes no guarantee, because the prefetch moves nothing and writes only the attempts record of
the claims it reads (so a death while prefetching or decoding ahead is counted against that
input): it reads the claimed inputs of the two jobs at the head of the segment queue (a peek; the
jobs stay queued) and keeps what it made in memory. The jobs themselves still run in RQ as before —
when this worker dequeues such a job, its job function takes the prepared result (if the job, its
files and the model are still the same) and publishes and finishes it; any other outcome (another
worker took the job, the claim moved, the model was reloaded, the prefetch failed) drops the
prefetch and the job runs from scratch. A SIGKILL at any moment loses nothing: nothing was
published or moved that the job function would not have done itself.

The model is never used by two threads at once: every job waits for an in-flight prefetch
before it runs (`take` / `drain`); the decode-ahead never touches the model's weights.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rq.job import Job
from rq.serializers import JSONSerializer

from common import attempts, queues, state

log = logging.getLogger("segd.worker")


@dataclass(frozen=True)
class _Key:
    job_id: str
    image: Path
    mask: Path | None


class Prefetcher:
    """One speculative `pipeline.prepare` of the next queued image job at a time, and one
    `pipeline.load` of the job queued after it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segd-prefetch")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="segd-decode-ahead")
        self._lock = threading.Lock()
        self._inflight: tuple[_Key, object, Future] | None = None
        self._ahead: tuple[_Key, object, Future] | None = None

    def start_next(self, connection, config, segmenter) -> bool:
        """Begin preparing the job at the head of the segment queue, and loading the one after
        it; False if there is none (or it is not a plain image job of a claim on disk)."""
        from worker.image.pipeline import load, prepare

        self.drain()
        keys = _peek(connection, config, 2)
        loading = self._take_ahead(keys[0] if keys else None, segmenter)
        if not keys:
            return False
        key = keys[0]

        def run():
            loaded = None
            if loading is not None:  # first: its own run of the claim has ended then
                try:
                    loaded = loading.result()
                except Exception:  # a bad input fails again below, then in its job
                    loaded = None
            # The prefetch is a run of that claim: an input that kills the worker while it is
            # prefetched is counted against itself (common.attempts), not only against the job
            # that was being written meanwhile.
            with _counted(key, "prefetch"):
                return prepare(segmenter, key.image, key.mask, finish=False, loaded=loaded)

        def load_ahead(ahead: _Key):
            with _counted(ahead, "decode-ahead"):
                return load(segmenter, ahead.image, ahead.mask, preprocess=True)

        with self._lock:
            self._inflight = (key, segmenter, self._pool.submit(run))
            if len(keys) > 1:
                self._ahead = (keys[1], segmenter, self._loader.submit(load_ahead, keys[1]))
        return True

    def _take_ahead(self, key: _Key | None, segmenter) -> Future | None:
        """The decode-ahead of exactly `key` for this model (None: there is none; any other is
        dropped once it ended)."""
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if ahead[0] == key and ahead[1] is segmenter:
            return ahead[2]
        _wait_quietly(ahead[2])
        return None

    def take(self, job_id: str, image: Path | None, mask: Path | None, current_segmenter):
        """(the prepared result for exactly this job, files and model, or None; the segmenter).
        Waits for an in-flight prefetch before it calls `current_segmenter()` (which may reload
        the model), so the model is never used, or replaced, under a running prefetch."""
        with self._lock:
            inflight, self._inflight = self._inflight, None
        if inflight is None:
            return None, current_segmenter()
        key, used, future = inflight
        try:
            prepared = future.result()
        except Exception as exc:  # a bad input fails again, properly, in the job itself
            log.debug("prefetch of %s dropped: %s", key.job_id, exc)
            prepared = None
        segmenter = current_segmenter()
        same_job = (key.job_id, key.image, key.mask) == (job_id, image, mask)
        if prepared is None or not same_job or used is not segmenter:
            return None, segmenter
        log.info("job %s: prefetched while the previous result was written", job_id)
        return prepared, segmenter

    def settle(self) -> None:
        """Wait for an in-flight prefetch and decode-ahead to finish, keeping their results (so
        no thread of this worker is using the model or a claim's attempts record once a job
        starts)."""
        with self._lock:
            running = [work[2] for work in (self._inflight, self._ahead) if work is not None]
        for future in running:
            _wait_quietly(future)

    def drain(self) -> None:
        """Wait for and drop any in-flight prefetch (before the model is used otherwise)."""
        with self._lock:
            inflight, self._inflight = self._inflight, None
        if inflight is not None:
            _wait_quietly(inflight[2])

    def drain_all(self) -> None:
        """`drain`, and drop the decode-ahead too (a video job needs the memory and the device)."""
        self.drain()
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is not None:
            _wait_quietly(ahead[2])


def _wait_quietly(future: Future) -> None:
    try:
        future.result()
    except Exception:
        pass  # a failed prefetch is dropped; its job fails properly when it runs


@contextmanager
def _counted(key: _Key, what: str):
    """A run of claim `key` on disk (common.attempts, its worker named `what`) for the time of
    the block."""
    attempts.begin(key.image.parent, what)
    try:
        yield
    finally:
        attempts.end(key.image.parent)


def _peek(connection, config, count: int = 1) -> list[_Key]:
    """The first `count` jobs of the segment queue as (job id, claimed image, claimed mask),
    up to the first that is not a plain image job of a claim on disk."""
    keys: list[_Key] = []
    try:
        queue = queues.queue(queues.SEGMENT_QUEUE, connection)
        for job_id in queue.get_job_ids(0, count):
            key = _key(connection, config, job_id)
            if key is None:
                break
            keys.append(key)
    except Exception as exc:  # a peek is an optimisation: never fail a job over it
        log.debug("no prefetch: %s", exc)
    return keys


def _key(connection, config, rq_id: str) -> _Key | None:
    job = Job.fetch(rq_id, connection=connection, serializer=JSONSerializer)
    if job.func_name != "worker.jobs.segment":
        return None
    kwargs = dict(zip(("job_id", "image", "mask"), job.args, strict=False)) | job.kwargs
    job_id, image, mask = kwargs.get("job_id"), kwargs.get("image"), kwargs.get("mask")
    if not isinstance(job_id, str) or not state.JOB_ID_PATTERN.fullmatch(job_id):
        return None
    claim_dir = state.folder(config.paths.state, state.CLAIMED, job_id)
    if not claim_dir.is_dir():
        return None
    image_path = state.safe_member(claim_dir, image)
    if image_path is None:
        return None
    return _Key(job_id, image_path, state.safe_member(claim_dir, mask))


_prefetcher: Prefetcher | None = None


def prefetcher() -> Prefetcher:
    """The worker process's Prefetcher."""
    global _prefetcher
    if _prefetcher is None:
        _prefetcher = Prefetcher()
    return _prefetcher
