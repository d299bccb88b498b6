"""common.durable: renames that are on disk when they return, and the modules whose renames the
file system's truth depends on use them (checked by reading their code: a power cut cannot be
simulated here without mocking the file system)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from common.durable import durable_rename, replace_json
from tests.conftest import ROOT


def test_durable_rename_moves_files_and_folders_between_folders_and_returns_the_target(tmp_path):
    """A file and a folder (with its content) move to another folder; the old names are gone; a
    file replaces an existing file, as os.replace does; a missing source raises."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "x.jpg").write_bytes(b"x")
    (b / "x.jpg").write_bytes(b"old")
    assert durable_rename(a / "x.jpg", b / "x.jpg") == b / "x.jpg"
    assert (b / "x.jpg").read_bytes() == b"x" and not (a / "x.jpg").exists()
    (a / "job").mkdir()
    (a / "job" / "claim.json").write_text("{}")
    assert durable_rename(a / "job", b / "job") == b / "job"
    assert (b / "job" / "claim.json").read_text() == "{}" and list(a.iterdir()) == []
    with pytest.raises(FileNotFoundError):
        durable_rename(a / "gone", b / "gone")


def test_replace_json_replaces_whole_and_leaves_no_temp_file(tmp_path):
    """replace_json writes the document whole under its name and leaves nothing else behind."""
    path = tmp_path / "error.json"
    replace_json(path, {"reason": "first"})
    replace_json(path, {"reason": "second"})
    assert json.loads(path.read_text()) == {"reason": "second"}
    assert [p.name for p in tmp_path.iterdir()] == ["error.json"]


# The modules that move inputs, claims, results of record and the model registry's files.
DURABLE_MODULES = (
    "common/state.py",  # done/ and failed/ moves, error.json, ended.json, inbox entries refused
    "common/registry.py",  # models/current, history.json, new versions
    "watcher/claims.py",  # claimed/<id>, duplicates/, copies across file systems
    "worker/claimed.py",  # re-keying a claim to the model version that runs
    "watcher/recovery.py",  # finishing an interrupted re-keying
)


def _bare_renames(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "os"
            and node.func.attr in ("rename", "replace", "renames")
        ):
            found.append(f"{path.name}:{node.lineno} os.{node.func.attr}")
    return found


def test_state_claims_and_registry_rename_only_through_durable_rename():
    """No bare os.rename / os.replace in the modules whose renames the state depends on: each goes
    through durable_rename, which fsyncs the folders involved before returning."""
    bare = [hit for module in DURABLE_MODULES for hit in _bare_renames(ROOT / module)]
    assert bare == []
