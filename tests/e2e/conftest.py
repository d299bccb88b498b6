"""The whole service in each test: a real redis-server on a temp socket; the test starts the
watcher and worker processes it needs (tests/service_helpers.py)."""

from __future__ import annotations

import pytest

from tests.service_helpers import Service


@pytest.fixture
def service(tmp_path, tiny_checkpoint):
    site = Service(tmp_path / "site", checkpoint=tiny_checkpoint)
    site.start_redis()
    yield site
    site.close()
