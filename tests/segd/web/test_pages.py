"""segd.web.app pages: what a person sees on /, the results gallery, a result's page, the
failures with Retry, the models with their curves, and thumbnails made once and cached."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from tests.segd.web.conftest import HISTORY, RESULTS, client_for, csrf_of


def _thumbs(html: str) -> list[str]:
    return re.findall(r'<img src="/thumbs/([^"?]+)\?v=', html)


def test_home_shows_the_status_the_latest_results_and_the_failures(client):
    """/ shows the health verdict, the results newest first as thumbnails (the inbox folder as a
    folder), and the failed file's name, reason and Retry button carrying the CSRF token."""
    html = client.get("/").text
    assert "Redis is unreachable" in html  # no Redis in this test: said, not crashed
    assert _thumbs(html) == ["groceries", "truck"]
    assert 'href="/results?folder=batch"' in html
    assert "broken.jpg" in html and "cannot be decoded as an image" in html
    assert re.search(
        r'<form method="post" action="/failures/[^"]+/retry">\s*<input type="hidden" name="csrf" '
        rf'value="{csrf_of(client)}">',
        html,
    )
    assert 'data-refresh="/fragments/status"' in html  # live without reloading


def test_the_status_fragment_shows_queues_and_workers_of_a_real_redis(site, tmp_path):
    """With Redis up, the live fragment lists the queues (with counts) and the disk space."""
    from tests.service_helpers import Service

    service = Service(tmp_path / "svc")
    service.start_redis()
    try:
        client = client_for(site, SEGD_REDIS__URL=f"unix://{service.socket}")
        html = client.get("/fragments/status").text
        for queue in ("segment", "video", "train"):
            assert f"<td>{queue}</td>" in html
        assert "free of" in html
        assert "worker missing: 0 live on queue segment" in html  # the health check's verdict
        status = client.get("/api/status").json()
        assert status["redis"]["ok"] is True and status["disks"][0]["free_bytes"] > 0
    finally:
        service.close()


def test_results_are_newest_first_filtered_by_name_and_paged(site):
    """The gallery sorts by result time, filters by a name part (any case), pages, and opens an
    inbox folder to show the results inside it."""
    client = client_for(site)
    html = client.get("/results").text
    assert _thumbs(html) == ["groceries", "truck"] and "3 entries" in html
    assert _thumbs(client.get("/results?q=TRU").text) == ["truck"]
    inside = client.get("/results?folder=batch").text
    assert _thumbs(inside) == ["batch/labpics"]
    for i in range(30):
        (site / "outbox" / f"extra{i:02d}").mkdir()
    first = client.get("/results").text
    assert "page 1 of 2" in first and "older →" in first
    second = client.get("/results?page=2").text
    assert _thumbs(first) == []  # the 24 newest: the folders just made
    assert "page 2 of 2" in second and _thumbs(second) == ["groceries", "truck"]


def test_a_result_page_shows_the_views_the_segments_and_links_to_every_file(client, site):
    """/results/truck: overlay / colour map / index and the input image to switch between, one
    table row per segment (id, score, stability, area, palette colour), a link to every file."""
    html = client.get("/results/truck").text
    segments = json.loads((site / "outbox/truck/segments.json").read_text())["segments"]
    rows = re.findall(r'<tr data-id="(\d+)" data-color="(#[0-9a-f]{6})"', html)
    assert [int(i) for i, _ in rows] == [s["id"] for s in segments] and segments
    assert 'data-view="/inputs/truck"' in html
    for name in ("overlay.jpg", "color.png", "index.png"):
        assert f'data-view="/files/truck/{name}"' in html
    for name in ("overlay.jpg", "color.png", "index.png", "segments.json", "manifest.json"):
        assert f'<a href="/files/truck/{name}">{name}</a>' in html
        assert (
            client.get(f"/files/truck/{name}").content
            == (site / "outbox/truck" / name).read_bytes()
        )
    assert client.get("/results/batch").status_code == 303  # a folder: the gallery of it
    assert client.get("/results/nope").status_code == 404


def test_thumbnails_are_made_once_by_the_web_process_and_cached_under_state(client, site):
    """The first request makes state/web/thumbs/<job_id>-320.jpg (longest side 320); later ones
    serve that file unchanged; the input image is a cached preview too."""
    job_id = json.loads((site / "outbox/truck/manifest.json").read_text())["job_id"]
    cached = site / "state/web/thumbs" / f"{job_id}-320.jpg"
    assert not cached.exists()
    first = client.get("/thumbs/truck")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(first.content)).size) == 320
    made_at = cached.stat().st_mtime_ns
    assert client.get("/thumbs/truck").content == first.content == cached.read_bytes()
    assert cached.stat().st_mtime_ns == made_at
    preview = client.get("/inputs/truck")
    assert (
        preview.status_code == 200 and (site / "state/web/thumbs" / f"{job_id}-input.jpg").is_file()
    )
    assert client.get("/inputs/groceries").status_code == 404  # its input is not in state/done


def test_the_models_page_shows_versions_scores_and_curves_drawn_on_the_server(client):
    """Newest first, the current one marked, mIoU before → after, and an SVG curve with one
    point per validation; the curve is also an SVG file of its own."""
    html = client.get("/models").text
    assert html.index('id="v-v2"') < html.index('id="v-v1"')
    assert re.search(r'<h3>v2 <span class="tag ok">current</span></h3>', html)
    assert "validation mIoU 0.3100 → <strong>0.5500</strong>" in html
    v1 = html[html.index('id="v-v1"') :]
    assert v1.count('<circle class="c-point') == len(HISTORY)
    svg = client.get("/models/v1/curve.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml") and "<polyline" in svg.text
    assert client.get("/models/v9/curve.svg").status_code == 404


def test_promote_and_rollback_buttons_change_the_current_model(client, site):
    """Promote v1 makes it current and says so; Roll back returns to v2; an unknown version is
    refused with the registry's message."""
    token = csrf_of(client)
    current = site / "models/current"
    response = client.post("/models/v1/promote", data={"csrf": token})
    assert response.status_code == 303 and current.read_text().strip() == "v1"
    page = client.get(response.headers["location"]).text
    assert "v1 is current now (was v2)" in page
    response = client.post("/models/rollback", data={"csrf": token})
    assert current.read_text().strip() == "v2"
    assert "rolled back from v1 to v2" in client.get(response.headers["location"]).text
    response = client.post("/models/v9/promote", data={"csrf": token})
    assert "no model version &#39;v9&#39;" in client.get(response.headers["location"]).text


def test_retry_runs_segd_retry_on_the_failed_input_and_shows_its_outcome(site, client):
    """Retry posts to /failures/<name>/retry, which runs `segd retry` (segd.retry.retry) on that
    entry: broken.jpg (refused by the watcher) goes back into the inbox under its name, its
    failed entry is gone, and the page says which job id it will be claimed as."""
    (name,) = [p.name for p in (site / "state/failed").iterdir()]
    response = client.post(f"/failures/{name}/retry", data={"csrf": csrf_of(client)})
    assert response.status_code == 303
    page = client.get(response.headers["location"]).text
    assert re.search(rf"{re.escape(name)}: queued again as job [0-9a-f]{{32}}", page), page
    assert (site / "inbox" / "broken.jpg").read_bytes().startswith(b"\xff\xd8")
    assert not (site / "state/failed" / name).exists()


def test_retry_of_an_unknown_entry_is_a_404(client):
    """A name that is not in state/failed/ (or not a plain name) is refused before segd retry."""
    token = csrf_of(client)
    assert client.post("/failures/nope/retry", data={"csrf": token}).status_code == 404
    assert client.post("/failures/..%2f..%2fdone/retry", data={"csrf": token}).status_code == 404


@pytest.mark.parametrize("stem", RESULTS[:2])
def test_pages_load_no_script_or_style_from_elsewhere(client, stem):
    """Every script, stylesheet and picture of the pages is this server's own (no CDN), and the
    CSP header allows only this origin's scripts."""
    for url in ("/", "/results", f"/results/{stem}", "/failures", "/models"):
        response = client.get(url)
        html = response.text
        assert not re.search(r'(src|href)="(https?:)?//', html), url
        assert "script-src 'self'" in response.headers["content-security-policy"]
