"""`segd train --follow`'s progress bar against a real redis-server: it is fed from the job's
meta and redraws only when something changed (a log file gets one line per change, not one per
poll)."""

from __future__ import annotations

import threading
import time

import pytest
from rq.job import Job, JobStatus

from common import queues
from segd.train import follow
from tests.service_helpers import Service


@pytest.fixture
def redis_site(tmp_path):
    service = Service(tmp_path / "site")
    service.start_redis(appendonly=False)
    yield service
    service.close()


def test_follow_redraws_once_per_change_and_ends_with_the_summary(redis_site, capsys):
    connection = redis_site.redis_client()
    job = Job.create(
        "worker.jobs.train",
        kwargs={"dataset": "shapes", "steps": 3},
        connection=connection,
        serializer=queues.JSONSerializer,
        origin=queues.TRAIN_QUEUE,
    )
    job.save()
    # Each state is held for several polls; only 4 of them differ.
    states = [
        {"steps": 3, "step": 0, "phase": "zero-shot validation"},
        {"steps": 3, "step": 1, "phase": "training", "loss": 2.5},
        {"steps": 3, "step": 2, "phase": "training", "loss": 2.0, "val_miou": 0.4},
        {"steps": 3, "step": 3, "phase": "publishing", "loss": 1.5, "val_miou": 0.6},
    ]

    def run():
        for meta in states:
            job.meta.update(meta)
            job.save_meta()
            time.sleep(0.3)  # ~10 polls of 0.03 s
        job.set_status(JobStatus.FINISHED)

    writer = threading.Thread(target=run)
    writer.start()
    code = follow(job.id, connection, poll_s=0.03)
    writer.join()

    captured = capsys.readouterr()
    assert code == 0
    frames = [f for f in captured.err.replace("\n", "\r").split("\r") if f.strip()]
    # tqdm's first empty bar, one frame per state, and the frame close() draws again.
    assert len(frames) <= len(states) + 2, frames
    assert "publishing" in frames[-1] and "3/3" in frames[-1] and "val mIoU=0.6000" in frames[-1]
    assert any("zero-shot validation" in f and "0/3" in f for f in frames)
    assert captured.out.startswith("version ")


def test_train_refuses_a_dataset_whose_images_link_outside_the_root(redis_site, tmp_path):
    """`segd train evil` with evil/images -> a folder outside training.datasets_root exits with
    the refusal naming evil/images; nothing is enqueued and no model version is published."""
    import os
    import subprocess
    import sys

    from tests.synthetic import labelled_folder

    root = tmp_path / "datasets"
    outside = labelled_folder(tmp_path / "elsewhere", images=2)
    evil = root / "evil"
    evil.mkdir(parents=True)
    os.symlink(outside / "images", evil / "images")
    os.symlink(outside / "labels", evil / "labels")
    env = {**redis_site.env, "SEGD_TRAINING__DATASETS_ROOT": str(root)}

    result = subprocess.run(
        [sys.executable, "-m", "segd", "train", "evil"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert f"{evil / 'images'}: links outside the datasets root {root.resolve()}" in result.stderr
    assert "img000" not in result.stderr
    train_queue = queues.queue(queues.TRAIN_QUEUE, redis_site.redis_client())
    assert train_queue.count == 0
    assert not (redis_site.root / "models").exists() or not any(
        (redis_site.root / "models").iterdir()
    )
