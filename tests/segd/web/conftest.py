"""A site with real results for the web page's tests: result folders written by the worker's own
`segment_file` with the random-weights tiny model, a done job's input in state/done/, failed
inputs filed by `state.fail_entry`, and two model versions with cards as training writes them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from common import registry, state
from tests.conftest import tiny_config
from tests.synthetic import draw_scene

LOCAL = "http://127.0.0.1:9471"  # the Host a browser on this machine sends
RESULTS = ("truck", "groceries", "labpics")  # oldest first
HISTORY = [
    {"step": 0, "miou": 0.31},
    {"step": 20, "miou": 0.42},
    {"step": 40, "miou": 0.55},
    {"step": 60, "miou": 0.53},
]


def write_version(models: Path, version: str, history: list[dict], created: str) -> None:
    """A model version as worker/training/run.py publishes it (weights are never read here)."""
    folder = models / version
    folder.mkdir(parents=True)
    (folder / registry.WEIGHTS_FILE).write_bytes(b"not read by the web page")
    card = {
        "version": version,
        "created": created,
        "dataset": {"path": "/data/labpics"},
        "steps": history[-1]["step"],
        "validation": {
            "miou_before": history[0]["miou"],
            "miou_after": max(h["miou"] for h in history),
            "history": history,
        },
        "promoted": True,
        "promotion_reason": "better than the current model",
    }
    (folder / registry.CARD_FILE).write_text(json.dumps(card))


@pytest.fixture(scope="session")
def site_template(tmp_path_factory, tiny_model) -> Path:
    """Made once: outbox/{truck,groceries}/, outbox/batch/labpics/ (an inbox folder), truck's input
    kept in state/done/<job_id>/, one failed input, models v1 (history) and v2 (current)."""
    import os
    import time

    from worker.image.pipeline import segment_file
    from worker.image.segmenter import Segmenter

    root = tmp_path_factory.mktemp("site")
    config = tiny_config(root)
    segmenter = Segmenter(tiny_model, config)
    outbox = Path(config.paths.outbox)
    sources = {}
    for i, stem in enumerate(RESULTS):
        image = root / "src" / f"{stem}.jpg"
        image.parent.mkdir(exist_ok=True)
        Image.fromarray(draw_scene(320, 4 + i, seed=i)[0]).save(image, quality=90)
        sources[stem] = image
        out_root = outbox / "batch" if stem == "labpics" else outbox
        folder = segment_file(segmenter, image, None, out_root)
        stamp = time.time() - 100 + 10 * i  # oldest first, a second apart at least
        os.utime(folder / "manifest.json", (stamp, stamp))
    job_id = json.loads((outbox / "truck" / "manifest.json").read_text())["job_id"]
    done = Path(config.paths.state) / state.DONE / job_id
    done.mkdir(parents=True)
    shutil.copy(sources["truck"], done / "truck.jpg")
    claim = state.Claim(job_id, "truck", "truck.jpg", None, "base", state.now_iso(), 1)
    state.write_claim(done, claim)
    inbox = Path(config.paths.inbox)
    inbox.mkdir(parents=True)
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    state.fail_entry(config.paths.state, inbox / "broken.jpg", "cannot be decoded as an image")
    models = Path(config.paths.models)
    write_version(models, "v1", HISTORY, "2026-11-30T10:00:00+0000")
    write_version(
        models,
        "v2",
        [{"step": 0, "miou": 0.5}, {"step": 10, "miou": 0.6}],
        "2026-12-01T10:00:00+0000",
    )
    registry.promote(models, "v1")
    registry.promote(models, "v2")
    return root


@pytest.fixture
def site(tmp_path, site_template) -> Path:
    """A fresh copy of the site for one test (mtimes kept, so 'newest first' holds)."""
    root = tmp_path / "site"
    shutil.copytree(site_template, root, symlinks=True)
    return root


def client_for(root: Path, **env: str) -> TestClient:
    from segd.web.app import build_app

    return TestClient(build_app(tiny_config(root, **env)), base_url=LOCAL, follow_redirects=False)


@pytest.fixture
def client(site) -> TestClient:
    return client_for(site)


def csrf_of(client: TestClient) -> str:
    return client.app.state.csrf  # type: ignore[attr-defined]
