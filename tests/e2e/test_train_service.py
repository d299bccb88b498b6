"""Training through the service: a real redis-server, the real `segd trainer`, `segd worker` and
`segd watch` processes, RQ's own `rq enqueue` command line, and the registry commands."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from common import queues, registry
from common.config import load_config
from segd import status
from tests.service_helpers import Service
from tests.synthetic import draw_scene, labelled_folder

# Learns the one training image in ~10 steps (see tests/test_training.py).
FAST = {
    "SEGD_TRAINING__TRAIN_ENCODER": "true",
    "SEGD_TRAINING__LR": "0.001",
    "SEGD_TRAINING__ENCODER_LR": "0.0003",
    "SEGD_TRAINING__WARMUP_STEPS": "2",
    "SEGD_TRAINING__VAL_EVERY": "10",
    "SEGD_TRAINING__BATCH_IMAGES": "1",
}


@pytest.fixture
def site(tmp_path, tiny_checkpoint):
    datasets = tmp_path / "datasets"
    service = Service(
        tmp_path / "site",
        checkpoint=tiny_checkpoint,
        SEGD_TRAINING__DATASETS_ROOT=str(datasets),
        **FAST,
    )
    service.datasets = datasets
    service.start_redis()
    yield service
    service.close()


def test_rq_enqueue_trains_publishes_promotes_and_the_running_worker_switches(site):
    """The `rq enqueue` line of docs/training.md → a version with its card, promoted; the worker that was
    already running segments the next image with it, without a restart."""
    labelled_folder(site.datasets / "shapes", images=1, size=256, shapes=1, seed=3)
    site.start("worker")
    site.start("watch")
    first = Image.fromarray(draw_scene(256, 1, seed=3)[0])
    first.save(site.inbox / "before.png")
    site.wait_for(lambda: "before" in site.results(), what="the first result")
    assert site.results()["before"]["model"]["model_version"] == "base"

    site.start("trainer")
    url = site.env["SEGD_REDIS__URL"]
    rq = Path(sys.executable).with_name("rq")
    enqueue = subprocess.run(
        [str(rq), "enqueue", "-u", url, "-S", "json", "-q", "train", "--timeout", "4h",
         "worker.jobs.train", "dataset=shapes", "steps:=20"],
        env=site.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert enqueue.returncode == 0, enqueue.stderr

    config = load_config(None, site.env)

    def training_shown() -> bool:  # `segd status` shows the run's progress from its meta
        runs = status.collect(config).get("training", [])
        return any(r["phase"] == "training" and r["step"] and r["steps"] == 20 for r in runs)

    site.wait_for(training_shown, timeout=600, what="segd status to show the training step")
    models = site.root / "models"
    site.wait_for(
        lambda: registry.current_version(models) != registry.BASE,
        timeout=900,
        what="the trained version to become current",
    )
    version = registry.current_version(models)
    card = json.loads((models / version / registry.CARD_FILE).read_text())
    assert card["steps"] == 20 and card["promoted"]
    assert card["validation"]["miou_after"] > card["validation"]["miou_before"]
    assert card["dataset"]["path"] == str((site.datasets / "shapes").resolve())
    job = queues.queue(queues.TRAIN_QUEUE, site.redis_client()).finished_job_registry
    site.wait_for(lambda: job.count == 1, what="the train job to be finished")

    Image.fromarray(draw_scene(256, 2, seed=4)[0]).save(site.inbox / "after.png")
    site.wait_for(lambda: "after" in site.results(), what="the result after promotion")
    assert site.results()["after"]["model"]["model_version"] == version
    assert site.procs["worker"].poll() is None  # the same worker process, never restarted

    listed = site.segd("models", "list", "--json", timeout=600)
    assert json.loads(listed.stdout)["current"] == version
    rolled = site.segd("models", "rollback", timeout=600)
    assert rolled.returncode == 0 and f"current model: base (was {version})" in rolled.stdout
    assert registry.current_version(models) == registry.BASE
    promoted = site.segd("models", "promote", version, timeout=600)
    assert promoted.returncode == 0 and registry.current_version(models) == version
    missing = site.segd("models", "promote", "nope", timeout=600)
    assert missing.returncode == 3 and "no model version 'nope'" in missing.stderr


def test_a_malformed_dataset_fails_at_once_naming_every_bad_file(site):
    """Through `segd train --follow`: the job fails before training, is not retried, and the
    error lists each bad file; a path outside the datasets root is refused before enqueueing."""
    root = labelled_folder(site.datasets / "broken", images=3, size=64)
    (root / "labels" / "img001.png").unlink()
    (root / "images" / "img002.png").write_bytes(b"\x89PNG truncated")
    site.start("trainer")

    result = site.segd("train", "broken", "--steps", "5", "--follow", timeout=600)
    assert result.returncode == 1, result.stderr
    assert "img001.png: no label" in result.stderr
    assert "img002.png: not an image Pillow can read" in result.stderr
    failed = queues.queue(queues.TRAIN_QUEUE, site.redis_client()).failed_job_registry
    assert failed.count == 1  # failed once, no retry
    assert not (site.root / "models").exists() or not registry.versions(site.root / "models")

    outside = site.root / "elsewhere"
    shutil.copytree(site.datasets / "broken", outside)
    refused = site.segd("train", str(outside), timeout=600)
    assert refused.returncode == 1 and "outside the datasets root" in refused.stderr
    assert queues.queue(queues.TRAIN_QUEUE, site.redis_client()).count == 0
    bad_option = site.segd("train", "broken", "--set", "steps=0", timeout=600)
    assert bad_option.returncode == 2 and "steps" in bad_option.stderr


def test_the_trainer_process_stays_free_of_torch_and_refuses_other_callables(site, tmp_path):
    """Runs happen in forked processes: the trainer itself never maps libtorch (so each run
    gets a fresh CUDA context); a job naming another callable on its queue is refused."""
    from rq import Queue
    from rq.serializers import JSONSerializer

    trainer = site.start("trainer")
    connection = site.redis_client()
    site.wait_for(
        lambda: any(
            k.startswith(b"rq:worker:segd-trainer") for k in connection.keys("rq:worker:*")
        ),
        what="the trainer to register",
    )
    maps = Path(f"/proc/{trainer.pid}/maps").read_text()
    assert "libtorch" not in maps and "libc" in maps

    marker = tmp_path / "made-by-os-mkdir"
    Queue("train", connection=connection, serializer=JSONSerializer).enqueue(
        "os.mkdir", str(marker)
    )
    failed = queues.queue(queues.TRAIN_QUEUE, connection).failed_job_registry
    site.wait_for(lambda: failed.count == 1, what="the job to be refused")
    assert not marker.exists()
    assert "is not a segd job; refused" in site.log("trainer")
    assert site.stop("trainer") == 0


def test_a_trainer_killed_mid_run_resumes_the_run_from_its_checkpoint(site):
    """SIGKILL the trainer and its run after a checkpoint; a new trainer re-enqueues the run,
    which continues from that step (not from zero) and publishes one version."""
    labelled_folder(site.datasets / "shapes", images=1, size=256, shapes=1, seed=3)
    site.env["SEGD_TRAINING__CHECKPOINT_EVERY"] = "2"
    trainer = site.start("trainer")
    result = site.segd("train", "shapes", "--steps", "24", "--promote", "never", timeout=600)
    assert result.returncode == 0, result.stderr
    runs = site.root / "models" / ".runs"

    def checkpointed() -> bool:
        return (
            any((run / "state.pt").exists() for run in runs.glob("*")) if runs.exists() else False
        )

    site.wait_for(checkpointed, timeout=600, what="the first checkpoint")
    # SIGKILL the trainer and its forked run (no clean-up at all).
    children = Path(f"/proc/{trainer.pid}/task/{trainer.pid}/children").read_text().split()
    assert children, "the run should be in a forked work horse"
    for pid in [trainer.pid, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)
    trainer.wait()
    site.procs.pop("trainer")

    site.start("trainer")
    models = site.root / "models"
    site.wait_for(lambda: registry.versions(models), timeout=900, what="the resumed run's version")
    card = registry.versions(models)[0]["card"]
    assert card["steps"] == 24 and card["resumed_from_step"] >= 2
    assert "was interrupted; resuming it as job" in site.log("trainer")
    assert "resuming at step" in site.log("trainer")
    assert registry.current_version(models) == registry.BASE  # --promote never
