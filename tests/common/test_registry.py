"""common.registry: which model version is current (models/current) and where its weights are."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from common import registry
from common.errors import ModelError


def test_current_version_is_base_without_a_current_file(tmp_path):
    """No models folder, or one without `current`, means the base model."""
    assert registry.current_version(tmp_path / "missing") == "base"
    assert registry.current_version(tmp_path) == "base"


def test_current_version_is_base_for_an_empty_or_base_current_file(tmp_path):
    """An empty `current` file, or one naming base, means the base model."""
    (tmp_path / "current").write_text("\n")
    assert registry.current_version(tmp_path) == "base"
    (tmp_path / "current").write_text("base\n")
    assert registry.current_version(tmp_path) == "base"


def test_set_current_makes_a_version_current_without_leaving_temp_files(tmp_path):
    """set_current("v3") writes `current` (creating the folder) and current_version reads it
    back; only `current` is left in the folder."""
    models = tmp_path / "models"
    registry.set_current(models, "v3")

    assert registry.current_version(models) == "v3"
    assert (models / "current").read_text() == "v3\n"
    assert os.listdir(models) == ["current"]

    registry.set_current(models, "base")
    assert registry.current_version(models) == "base"


def test_current_stamp_is_none_without_current_and_changes_on_each_set_current(tmp_path):
    """current_stamp is None while nothing is promoted and differs after every promotion."""
    assert registry.current_stamp(tmp_path) is None
    registry.set_current(tmp_path, "v1")
    first = registry.current_stamp(tmp_path)
    registry.set_current(tmp_path, "v2")
    second = registry.current_stamp(tmp_path)

    assert first is not None and second is not None
    assert first != second
    assert registry.current_stamp(tmp_path) == second  # stable while nothing changes


def test_a_malformed_current_file_is_a_model_error_naming_the_file(tmp_path):
    """A `current` file naming a path instead of a version raises ModelError with the file and
    the bad value."""
    (tmp_path / "current").write_text("../x\n")
    message = f"{tmp_path / 'current'}: '../x' is not a model version name"
    with pytest.raises(ModelError, match=re.escape(message)):
        registry.current_version(tmp_path)


def test_weights_path_names_the_missing_file(tmp_path):
    """weights_path raises ModelError naming the version and models/<v>/model.pt when absent,
    and returns that path once the file exists."""
    expected = tmp_path / "v3" / "model.pt"
    with pytest.raises(ModelError, match=re.escape(f"'v3' is current but {expected} does not")):
        registry.weights_path(tmp_path, "v3")

    expected.parent.mkdir()
    expected.write_bytes(b"weights")
    assert registry.weights_path(tmp_path, "v3") == expected


def test_weights_path_does_not_accept_a_folder_named_model_pt(tmp_path):
    """A folder in place of model.pt is not weights."""
    (tmp_path / "v3" / "model.pt").mkdir(parents=True)
    with pytest.raises(ModelError, match="does not exist"):
        registry.weights_path(tmp_path, "v3")


@pytest.mark.parametrize("bad", ["../x", "", ".hidden", "a/b", "v 3", "x" * 65, "-v3"])
def test_set_current_rejects_bad_names_and_changes_nothing(tmp_path, bad):
    """set_current refuses names that are not version names and leaves `current` as it was."""
    registry.set_current(tmp_path, "v1")
    with pytest.raises(ModelError, match=re.escape(f"{bad!r} is not a model version name")):
        registry.set_current(tmp_path, bad)
    assert registry.current_version(tmp_path) == "v1"
    assert os.listdir(tmp_path) == ["current"]


def _version(models: Path, name: str, created: str) -> None:
    (models / name).mkdir(parents=True)
    (models / name / registry.WEIGHTS_FILE).write_bytes(b"weights")
    (models / name / registry.CARD_FILE).write_text(json.dumps({"created": created}))


def test_promote_and_rollback_walk_the_history_back_to_base(tmp_path):
    models = tmp_path / "models"
    _version(models, "v1", "2026-01-01")
    _version(models, "v2", "2026-01-02")
    assert registry.promote(models, "v1") == "base"
    assert registry.promote(models, "v2") == "v1"
    assert [v["version"] for v in registry.versions(models)] == ["v1", "v2"]
    assert [v["current"] for v in registry.versions(models)] == [False, True]
    assert registry.rollback(models) == ("v2", "v1")
    assert registry.rollback(models) == ("v1", "base")
    assert registry.current_version(models) == "base"
    with pytest.raises(ModelError, match="nothing to roll back to"):
        registry.rollback(models)
    log = json.loads((models / registry.HISTORY_FILE).read_text())["log"]
    assert [(e["action"], e["version"]) for e in log] == [
        ("promote", "v1"),
        ("promote", "v2"),
        ("rollback", "v1"),
        ("rollback", "base"),
    ]


def test_promoting_a_missing_version_names_the_known_ones(tmp_path):
    models = tmp_path / "models"
    _version(models, "v1", "2026-01-01")
    with pytest.raises(ModelError, match=r"no model version 'v9' .*versions: v1"):
        registry.promote(models, "v9")
    assert registry.current_version(models) == "base"


def test_publish_renames_a_complete_folder_and_never_overwrites(tmp_path):
    models = tmp_path / "models"
    staging = models / ".tmp-v1"
    staging.mkdir(parents=True)
    (staging / registry.WEIGHTS_FILE).write_bytes(b"w")
    (staging / registry.CARD_FILE).write_text("{}")
    assert registry.publish(models, staging, "v1") == models / "v1"
    assert not staging.exists() and (models / "v1" / registry.WEIGHTS_FILE).read_bytes() == b"w"
    again = models / ".tmp-v1b"
    again.mkdir()
    with pytest.raises(ModelError, match="exists already"):
        registry.publish(models, again, "v1")
