"""Videos through the service end to end: a real redis-server, `segd watch` and `segd worker`
processes, a random-weights SAM2.1 tiny at 256 px."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time

import cv2
import numpy as np
import pytest
from PIL import Image
from rq.job import Job
from rq.serializers import JSONSerializer

from common import jobids
from segd.status import render
from tests.service_helpers import Service
from tests.worker.video.test_frames import moving_square_frames

pytestmark = pytest.mark.slow


@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    site = Service(tmp_path / "site", checkpoint=tiny_checkpoint, SEGD_VIDEO__MAX_FRAMES="30")
    site.start_redis()
    yield site
    site.close()


def read_index_maps(folder) -> list[np.ndarray]:
    names = sorted(p.name for p in (folder / "index").iterdir())
    assert names == [f"{i:06d}.png" for i in range(len(names))]
    return [cv2.imread(str(folder / "index" / n), cv2.IMREAD_UNCHANGED) for n in names]


def test_the_first_30_frames_of_bedroom_give_30_maps_a_color_video_and_consistent_tracks(
    service, data_dir, tmp_path
):
    """bedroom.mp4 with video.max_frames = 30: 30 uint16 index maps, a color.mp4 that decodes to
    30 frames, tracks.json whose areas, first and last frames match the maps, and the job's
    progress reached 30/30. A truncated copy dropped beside it fails with a reason, and the
    worker goes on."""
    service.start("watch")
    service.start("worker")
    cut = (data_dir / "bedroom.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(cut[: len(cut) // 2])
    shutil.move(tmp_path / "cut.mp4", service.inbox / "cut.mp4")
    shutil.copy(data_dir / "bedroom.mp4", service.inbox / "bedroom.mp4")
    service.wait_for(
        lambda: len(service.folders("done")) == 1 and len(service.folders("failed")) == 1,
        timeout=300,
        what="one done and one failed video",
    )

    (failed,) = service.folders("failed")
    error = json.loads((failed / "error.json").read_text())
    assert (failed / "cut.mp4").exists()
    assert error["reason"] == (
        "cannot be read as a video (truncated, corrupt, or a codec FFmpeg does not know)"
    )

    folder = service.outbox / "bedroom"
    manifest = json.loads((folder / "manifest.json").read_text())
    sha = jobids.file_sha256(data_dir / "bedroom.mp4")
    assert manifest["input"]["sha256"] == sha and manifest["input"]["frames"] == 30
    assert manifest["job_id"] == jobids.job_id(sha, None, "base")
    maps = read_index_maps(folder)
    assert len(maps) == 30
    assert all(m.dtype == np.uint16 and m.shape == (540, 960) for m in maps)

    capture = cv2.VideoCapture(str(folder / "color.mp4"))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    assert decoded == 30

    tracks = json.loads((folder / "tracks.json").read_text())
    assert tracks["frames"] == 30 and tracks["objects"]
    stack = np.stack(maps)
    assert {o["id"] for o in tracks["objects"]} >= set(np.unique(stack)) - {0}
    for obj in tracks["objects"]:
        areas = (stack == obj["id"]).reshape(30, -1).sum(axis=1)
        visible = np.flatnonzero(areas)
        assert obj["first_frame"] == visible[0] and obj["last_frame"] == visible[-1]
        assert obj["areas"] == areas[visible[0] : visible[-1] + 1].tolist()
        assert len(obj["scores"]) == len(obj["areas"])
        assert all(0.0 <= s <= 1.0 for s in obj["scores"])
    # frame-0 objects are the image segmentation's ids 1..n, seeded at frame 0
    first = sorted(np.unique(maps[0]).tolist())[1:]
    assert first == list(range(1, len(first) + 1))
    assert {o["id"] for o in tracks["objects"] if o["seeded_at"] == 0} == set(first)

    job = Job.fetch(
        manifest["job_id"], connection=service.redis_client(), serializer=JSONSerializer
    )
    assert job.meta["progress"] == {"frames_done": 30, "frames_total": 30}


def test_a_frame_folder_copied_file_by_file_is_claimed_only_when_complete(service, tmp_path):
    """A folder whose frames arrive one by one (pauses shorter than the settle time) becomes one
    video job over all its frames; its mask, named after the folder, applies to the first frame."""
    service.env["SEGD_VIDEO__RESEED_EVERY"] = "0"
    service.env["SEGD_WATCHER__SETTLE_SCAN_S"] = "3.0"  # a busy CI host may pause a copy for 1 s
    service.start("watch")
    service.start("worker")
    frames = moving_square_frames(8)
    folder = service.inbox / "clip"
    folder.mkdir()
    region = np.zeros((48, 64), np.uint8)
    region[:, :32] = 255
    Image.fromarray(region).save(service.inbox / "clip.mask.png")

    def copy_slowly():
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp_path / f"{i:03d}.png")
            shutil.move(tmp_path / f"{i:03d}.png", folder / f"{i:03d}.png")
            time.sleep(0.4)  # well below the settle time

    writer = threading.Thread(target=copy_slowly)
    writer.start()
    writer.join()
    expected_sha = jobids.folder_sha256(folder)
    service.wait_for(lambda: "clip" in service.results(), timeout=240, what="the clip result")
    manifest = service.results()["clip"]
    assert manifest["input"]["sha256"] == expected_sha
    assert manifest["input"]["kind"] == "frames" and manifest["input"]["frames"] == 8
    assert manifest["mask"]["name"] == "clip.mask.png"
    maps = read_index_maps(service.outbox / "clip")
    assert len(maps) == 8 and maps[0].any() and not maps[0][:, 32:].any()  # region: frame 0
    assert service.folders("failed") == [] and list(service.inbox.iterdir()) == []


def test_status_shows_a_running_video_jobs_frames():
    """`segd status` prints a running video job's progress beside its worker."""
    data = {
        "redis": {"url": "unix:///x.sock", "ok": True},
        "queues": {},
        "workers": [
            {
                "name": "w",
                "host": "h",
                "device": "cpu",
                "model": "m",
                "model_version": "base",
                "state": "busy",
                "current_job": "abc",
                "progress": {"frames_done": 12, "frames_total": 30},
            }
        ],
        "last_hour": {"done": 0, "failed": 0, "files_per_minute": 0.0},
        "waiting": {"inbox": 0, "claimed": 1},
        "latest_failures": [],
    }
    assert "busy  job abc (frames 12/30)" in render(data)


def test_claims_of_videos_and_frame_folders_go_to_the_video_queue_as_json_jobs(service):
    """enqueue_claim sends x.mp4 and a frame folder `x` to the `video` queue as
    worker.jobs.segment_video (allow-listed) with video.job_timeout_s, and images to `segment`."""
    from common import queues, state
    from common.config import load_config

    config = load_config(None, service.env)
    connection = service.redis_client()
    for name, queue_name in (("a.mp4", "video"), ("frames", "video"), ("a.jpg", "segment")):
        claim = state.Claim(
            job_id=jobids.job_id(name, None, "base"),
            stem="a",
            image=name,
            mask=None,
            model_version="base",
            claimed_at="t",
            seq=1,
        )
        job = queues.enqueue_claim(connection, claim, config)
        assert job.origin == queue_name
        if queue_name == "video":
            assert job.func_name == queues.VIDEO_JOB in queues.ALLOWED_CALLABLES
            assert job.kwargs == {"job_id": claim.job_id, "video": name, "mask": None}
            assert job.timeout == config.video.job_timeout_s
        else:
            assert job.func_name == queues.SEGMENT_JOB


def test_segment_video_refuses_arguments_that_are_not_job_ids_or_plain_names(
    tmp_path, tiny_checkpoint
):
    """Video job arguments are untrusted too: a path for a job id or a name with a separator is
    refused before any file is touched."""
    from tests.conftest import tiny_config
    from worker import jobs

    jobs.install_runtime(
        jobs.Runtime(tiny_config(tmp_path, SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint)))
    )
    try:
        with pytest.raises(ValueError, match="not a segd job id"):
            jobs.segment_video("../../etc", "passwd")
        claim = tmp_path / "state" / "claimed" / ("b" * 32)
        claim.mkdir(parents=True)
        (claim / "claim.json").write_text(
            '{"job_id": "' + "b" * 32 + '", "stem": "x", "image": "x.mp4", "mask": null, '
            '"model_version": "base", "claimed_at": "t", "seq": 1}'
        )
        with pytest.raises(ValueError, match="not a plain file name"):
            jobs.segment_video("b" * 32, "../x.mp4")
    finally:
        jobs.install_runtime(None)


def test_a_worker_killed_mid_video_leaves_no_half_written_frames_after_the_rerun(service, data_dir):
    """SIGKILL the worker while it writes a video's frames (its hidden temp folder holds some
    index maps): after a restart the video is tracked again from the start and published whole,
    and the rerun removed the dead run's temp folder, so no frames of it stay in the outbox."""
    service.start("watch")
    worker = service.start("worker")
    shutil.copy(data_dir / "bedroom.mp4", service.inbox / "bedroom.mp4")

    def frames_written() -> int:
        return sum(
            len(list((entry / "index").glob("*.png")))
            for entry in service.outbox.iterdir()
            if entry.name.startswith(".tmp-") and (entry / "index").is_dir()
        )

    service.wait_for(lambda: frames_written() >= 3, timeout=300, what="frames being written")
    service.stop("worker", sig=signal.SIGKILL)
    assert worker.poll() is not None and frames_written() >= 3  # the dead run's half
    assert service.folders("done") == [] and len(service.folders("claimed")) == 1
    service.start("worker")
    service.wait_for(lambda: len(service.folders("done")) == 1, timeout=300, what="the rerun")

    assert [e.name for e in service.outbox.iterdir()] == ["bedroom"]
    assert len(read_index_maps(service.outbox / "bedroom")) == 30
    assert "removed 1 half-written result folder(s) of a run that died" in service.log("worker")
