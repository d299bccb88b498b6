"""The page in a real browser (Debian's chromium through chromium-driver, driven by Selenium)
against `segd up` with a real redis-server, watcher and worker (random weights): what a person
sees after dropping three images and one broken file, and what the page's buttons do.

Skipped, with the reason, where chromium or chromium-driver is not installed (`make test`
installs both when it runs as root). Nothing is downloaded: Selenium is given both paths.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, TINY
from tests.segd.web.conftest import HISTORY, write_version
from tests.segd.web.test_server import free_port, wait_until_listening
from tests.service_helpers import end_up, start_up
from tests.synthetic import draw_scene

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install -y chromium "
        "chromium-driver; `make test` does it when run as root)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (dev extra)"
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

STEMS = ("harbour", "kitchen", "street")
WAIT_S = 180


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(draw_scene(320, 5, seed=seed)[0]).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _drop(inbox: Path, name: str, data: bytes) -> None:
    """The way a careful writer drops a file: a hidden temp name, then one rename."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


def _wait(predicate, what: str, proc: subprocess.Popen, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, f"segd up exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def service(tiny_checkpoint):
    """`segd up` in a short temp folder with three results and one failure, and a browser."""
    root = Path(tempfile.mkdtemp(prefix="sdweb"))  # short: the private Redis's unix socket
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGD_")}
    env.update(
        TINY,
        PYTHONPATH=str(ROOT),
        SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint),
        SEGD_WEB__PORT=str(port),
        SEGD_WEB__REFRESH_S="1",
        SEGD_METRICS__PORT=str(free_port()),
        SEGD_SAMPLING__POINTS="8",
        SEGD_WATCHER__SETTLE_S="0.3",
        SEGD_WATCHER__SETTLE_SCAN_S="1.0",
        SEGD_WATCHER__RESCAN_INTERVAL_S="1.0",
    )
    log = open(root / "up.log", "wb")
    proc = start_up(root, env, log)
    driver = None
    try:
        wait_until_listening(port, proc)
        inbox = root / "inbox"
        for seed, stem in enumerate(STEMS):
            _drop(inbox, f"{stem}.jpg", _jpeg(seed))
        _drop(inbox, "broken.jpg", _jpeg(9)[:300])  # a truncated JPEG
        outbox, failed = root / "outbox", root / "state" / "failed"

        def settled() -> bool:
            done = all((outbox / s / "manifest.json").is_file() for s in STEMS)
            return done and failed.is_dir() and len(list(failed.iterdir())) == 1

        _wait(settled, "three results and one failure", proc)
        write_version(root / "models", "v1", HISTORY, "2026-12-01T10:00:00+0000")

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,900",
        ):
            options.add_argument(argument)
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for downloads
        driver = webdriver.Chrome(
            options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER)
        )
        yield {"root": root, "url": f"http://127.0.0.1:{port}", "driver": driver, "proc": proc}
    finally:
        if driver is not None:
            driver.quit()
        end_up(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _loaded_thumbnails(driver) -> list[str]:
    """Names under the result thumbnails the browser has actually decoded."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#latest .tile.result'))"
        ".filter(t => { const i = t.querySelector('img'); return i.complete && i.naturalWidth > 0; })"
        ".map(t => t.querySelector('.name').textContent)"
    )


def test_the_page_shows_three_results_as_pictures_and_the_broken_file_with_its_reason(service):
    """http://127.0.0.1:<port>/ after three images and a truncated JPEG: three decoded overlay
    thumbnails named after the files, the broken file's name next to the reason the service wrote,
    a Retry button beside it, and a healthy status with the worker's model."""
    driver, root = service["driver"], service["root"]
    driver.get(service["url"] + "/")
    WebDriverWait(driver, 30).until(lambda d: len(_loaded_thumbnails(d)) == 3)
    assert sorted(_loaded_thumbnails(driver)) == sorted(STEMS)
    (entry,) = (root / "state" / "failed").iterdir()
    reason = json.loads((entry / "error.json").read_text())["reason"]
    failure = driver.find_element(By.CSS_SELECTOR, "#failures .failure")
    assert failure.find_element(By.CSS_SELECTOR, ".name").text == "broken.jpg"
    assert failure.find_element(By.CSS_SELECTOR, ".reason").text == reason and reason
    assert failure.find_element(By.CSS_SELECTOR, "button").text == "Retry"
    status = driver.find_element(By.ID, "status").text
    assert status.startswith("Healthy")
    assert "random weights" not in status and "cpu" in status
    manifest = json.loads((root / "outbox" / STEMS[0] / "manifest.json").read_text())
    assert f"{manifest['model']['name']} version {manifest['model']['model_version']}" in status


def test_a_file_added_on_the_page_goes_through_the_service_and_appears_without_a_reload(service):
    """The page's file input (the same code as a drop) puts the file into the inbox under its
    name; the service segments it and the live gallery shows its picture without reloading."""
    driver, root = service["driver"], service["root"]
    driver.get(service["url"] + "/")
    marker = driver.execute_script("window.__same_page = true; return 1")
    picture = root / "upload-src" / "garden bed (2).jpg"
    picture.parent.mkdir()
    picture.write_bytes(_jpeg(5))
    driver.find_element(By.ID, "file-input").send_keys(str(picture))
    WebDriverWait(driver, 30).until(
        lambda d: "garden bed (2).jpg: in the inbox" in d.find_element(By.ID, "uploads").text
    )
    WebDriverWait(driver, WAIT_S).until(lambda d: "garden bed (2)" in _loaded_thumbnails(d))
    assert marker == 1 and driver.execute_script("return window.__same_page === true")
    assert (root / "outbox" / "garden bed (2)" / "manifest.json").is_file()


def test_a_result_page_highlights_the_segment_under_the_pointer(service):
    """Hovering a row of the segments table draws that segment over the picture; the colour map
    button switches the picture to color.png."""
    driver = service["driver"]
    driver.get(service["url"] + f"/results/{STEMS[0]}")
    row = driver.find_element(By.CSS_SELECTOR, "tr[data-id]")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.getElementById('highlight').width > 0")
    )
    ActionChains(driver).move_to_element(row).perform()
    painted = driver.execute_script(
        "const c = document.getElementById('highlight');"
        "const p = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < p.length; i += 4) if (p[i] > 0) n++; return n;"
    )
    assert painted > 0
    driver.find_element(By.XPATH, "//button[text()='colour map']").click()
    assert (
        driver.find_element(By.ID, "view")
        .get_attribute("src")
        .endswith(f"/files/{STEMS[0]}/color.png")
    )


def test_the_models_page_shows_the_curve(service):
    """/models shows the version with its validation curve, one point per validation."""
    driver = service["driver"]
    driver.get(service["url"] + "/models")
    points = driver.find_elements(By.CSS_SELECTOR, "#v-v1 svg circle")
    assert len(points) == len(HISTORY) and all(p.is_displayed() for p in points)
    assert "0.3100 → 0.5500" in driver.find_element(By.ID, "v-v1").text


def test_retry_on_the_page_re_runs_the_failed_input(service):
    """Clicking Retry beside broken.jpg runs `segd retry` on it and the page says what happened
    (segd.retry)."""
    driver = service["driver"]
    driver.get(service["url"] + "/")
    driver.find_element(By.CSS_SELECTOR, "#failures .failure button").click()
    WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "p.notice"))
    notice = driver.find_element(By.CSS_SELECTOR, "p.notice").text
    assert re.search(r"queued again as job [0-9a-f]{32}", notice), notice
