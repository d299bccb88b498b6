"""`segd status`'s text rendering of what `collect` gathered."""

from worker.status import render


def _data(*workers: dict) -> dict:
    return {
        "redis": {"url": "unix:///x.sock", "ok": True},
        "queues": {},
        "workers": list(workers),
        "last_hour": {"done": 0, "failed": 0, "files_per_minute": 0.0},
        "waiting": {"inbox": 0, "claimed": 0},
        "latest_failures": [],
    }


def test_workers_show_their_queues_and_a_trainer_shows_no_model():
    """A segment worker shows its device and model; the trainer (no resident model, no info
    record) shows its queue and state only, never 'None'."""
    text = render(
        _data(
            {
                "name": "segd-h-0",
                "queues": ["segment", "video"],
                "host": "h",
                "device": "cuda:0",
                "model": "sam2.1_hiera_small",
                "model_version": "bottles-20261122-101500",
                "random_weights": False,
                "state": "idle",
            },
            {"name": "segd-trainer-h-7", "queues": ["train"], "host": "h", "state": "busy"},
        )
    )
    lines = [line for line in text.splitlines() if line.startswith("worker")]
    assert lines == [
        "worker   segd-h-0 [segment, video] on h (cuda:0), model sam2.1_hiera_small "
        "version bottles-20261122-101500: idle",
        "worker   segd-trainer-h-7 [train] on h: busy",
    ]
    assert "None" not in text
