"""Shared fixtures: sample data, configs, and SAM2 hiera-tiny models with random weights at 256 px
saved in the official checkpoint format (nothing is downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TINY = {"SEGD_MODEL__SIZE": "tiny", "SEGD_MODEL__IMAGE_SIZE": "256", "SEGD_MODEL__DEVICE": "cpu"}


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA.is_dir(), f"sample data not found at {DATA} (the shared/ folder beside the repo)"
    return DATA


@pytest.fixture
def data_copy(tmp_path, data_dir):
    """Copy named sample files into a temp folder (never write into shared/)."""

    def copy(*names: str) -> list[Path]:
        return [Path(shutil.copy(data_dir / name, tmp_path / name)) for name in names]

    return copy


def tiny_config(tmp_path: Path, **env: str):
    from common.config import load_config

    base = {
        **TINY,
        "SEGD_PATHS__MODELS": str(tmp_path / "models"),
        "SEGD_PATHS__OUTBOX": str(tmp_path / "outbox"),
        "SEGD_PATHS__STATE": str(tmp_path / "state"),
        "SEGD_PATHS__INBOX": str(tmp_path / "inbox"),
        "SEGD_MODEL__CHECKPOINT": "random",
    }
    return load_config(None, {**base, **env})


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weights SAM2.1 hiera-tiny (256 px) saved as {"model": state_dict}."""
    from worker.models.sam import SamModel, save_official_checkpoint

    folder = tmp_path_factory.mktemp("ckpt")
    model = SamModel.load(tiny_config(folder))
    return save_official_checkpoint(model.sam, folder / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_checkpoint):
    from worker.models.sam import SamModel

    folder = tmp_path_factory.mktemp("model")
    return SamModel.load(tiny_config(folder, SEGD_MODEL__CHECKPOINT=str(tiny_checkpoint)))


@pytest.fixture
def site(tmp_path):
    """A temp site (inbox/outbox/state/models) with a running redis-server and no segd processes
    (tests/service_helpers.Service). tests/segd/web overrides it with its own site."""
    from tests.service_helpers import Service  # it imports this module

    service = Service(tmp_path / "site")
    service.start_redis()
    yield service
    service.close()
