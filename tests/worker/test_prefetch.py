"""worker.prefetch: the next queued image is segmented and the one after it decoded ahead, with a
real redis-server, real claims on disk and the random-weights tiny model (no worker process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from common import attempts, jobids, queues, state
from common.config import load_config
from tests.service_helpers import Service, picture, sha
from worker import prefetch
from worker.image.pipeline import load
from worker.image.segmenter import Segmenter


def _queued_claims(site: Service, count: int) -> list[tuple[str, Path]]:
    """`count` claims in state/claimed/ with their jobs in the segment queue, in order."""
    config = load_config(None, environ=site.env)
    made = []
    for i in range(count):
        data = picture(300 + i)
        job_id = jobids.job_id(sha(data), None, "base")
        folder = site.state / state.CLAIMED / job_id
        folder.mkdir(parents=True)
        (folder / f"p{i}.jpg").write_bytes(data)
        claim = state.Claim(job_id, f"p{i}", f"p{i}.jpg", None, "base", state.now_iso(), i)
        state.write_claim(folder, claim)
        queues.enqueue_claim(site.redis_client(), claim, config)
        made.append((job_id, folder / f"p{i}.jpg"))
    return made


def test_the_next_job_is_segmented_and_the_one_after_it_decoded_ahead(site, tiny_model):
    """start_next while job 0 is written: job 1 goes through the model, job 2 is loaded and
    preprocessed; once job 1 runs, job 2's model pass starts from that very load (its pixels
    are not decoded again), and the result equals a fresh prepare. Every run of a claim by the
    prefetcher is ended in its attempts record (no death counted)."""
    config = load_config(None, environ=site.env)
    segmenter = Segmenter(tiny_model, config)
    connection = site.redis_client()
    claims = _queued_claims(site, 3)
    connection.lpop("rq:queue:segment")  # job 0: a worker dequeued it and writes its result now
    fetcher = prefetch.Prefetcher()

    assert fetcher.start_next(connection, config, segmenter)
    fetcher.settle()
    ahead = fetcher._ahead
    assert ahead is not None and ahead[0].job_id == claims[2][0]
    loaded = ahead[2].result()
    assert loaded.batch is not None and loaded.batch.shape[0] == 1  # preprocessed already

    prepared, used = fetcher.take(claims[1][0], claims[1][1], None, lambda: segmenter)
    assert used is segmenter and prepared is not None
    assert prepared.image_file.sha256 == sha(claims[1][1].read_bytes())

    connection.lpop("rq:queue:segment")  # job 1 runs; job 2 is at the head now
    assert fetcher.start_next(connection, config, segmenter)
    prepared2, _ = fetcher.take(claims[2][0], claims[2][1], None, lambda: segmenter)
    assert prepared2 is not None
    assert prepared2.image is loaded.image  # the decode-ahead's pixels, not a second decode
    fresh = segmenter.propose(*_decoded(segmenter, claims[2][1]))
    assert torch.equal(prepared2.result.proposals.logits, fresh.proposals.logits)
    assert np.array_equal(prepared2.result.proposals.points_xy, fresh.proposals.points_xy)
    for _, image in claims[1:]:
        record = attempts.read(image.parent)
        assert record["started"] == record["ended"] >= 1
        assert attempts.deaths(image.parent) == 0


def test_a_reloaded_model_drops_the_decode_ahead(site, tiny_model):
    """The decode-ahead is used only with the model it was made for: after a reload (another
    Segmenter) the input is loaded afresh."""
    config = load_config(None, environ=site.env)
    segmenter = Segmenter(tiny_model, config)
    connection = site.redis_client()
    claims = _queued_claims(site, 3)
    connection.lpop("rq:queue:segment")
    fetcher = prefetch.Prefetcher()
    assert fetcher.start_next(connection, config, segmenter)
    fetcher.settle()
    loaded = fetcher._ahead[2].result()
    fetcher.take(claims[1][0], claims[1][1], None, lambda: segmenter)

    reloaded = Segmenter(tiny_model, config)  # what Runtime makes when models/current changed
    connection.lpop("rq:queue:segment")
    assert fetcher.start_next(connection, config, reloaded)
    prepared, _ = fetcher.take(claims[2][0], claims[2][1], None, lambda: reloaded)
    assert prepared is not None and prepared.image is not loaded.image
    assert fetcher._ahead is None


def test_another_job_at_the_head_drops_the_decode_ahead(site, tiny_model):
    """Another worker took the job that was decoded ahead: the next prefetch is of the job now
    at the head, loaded afresh, and the dropped decode-ahead's run of its claim was ended (no
    death counted against an input this worker never ran)."""
    config = load_config(None, environ=site.env)
    segmenter = Segmenter(tiny_model, config)
    connection = site.redis_client()
    claims = _queued_claims(site, 4)
    connection.lpop("rq:queue:segment")
    fetcher = prefetch.Prefetcher()
    assert fetcher.start_next(connection, config, segmenter)
    fetcher.settle()
    loaded = fetcher._ahead[2].result()
    assert fetcher._ahead[0].job_id == claims[2][0]
    fetcher.take(claims[1][0], claims[1][1], None, lambda: segmenter)

    connection.lpop("rq:queue:segment")  # job 1 runs here
    connection.lrem("rq:queue:segment", 0, claims[2][0])  # job 2 went to another worker
    assert fetcher.start_next(connection, config, segmenter)
    prepared, _ = fetcher.take(claims[3][0], claims[3][1], None, lambda: segmenter)
    assert prepared is not None and prepared.image is not loaded.image
    assert prepared.image_file.sha256 == sha(claims[3][1].read_bytes())
    assert attempts.deaths(claims[2][1].parent) == 0
    assert attempts.read(claims[2][1].parent)["runs"][-1]["worker"] == "decode-ahead"


def _decoded(segmenter: Segmenter, path: Path):
    loaded = load(segmenter, path, None)
    return loaded.image, loaded.region
