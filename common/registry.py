"""The model registry on disk: which model version the workers should use.

    <paths.models>/base/<official file>.pt    official checkpoints (`segd models fetch`)
    <paths.models>/<version>/model.pt          a fine-tuned model (written by training jobs)
    <paths.models>/<version>/card.json         what it is: base, dataset, settings, scores, hardware
    <paths.models>/current                     a text file naming the version in use; absent = "base"
    <paths.models>/history.json                the promotion stack (`rollback` pops it) and a log

Light (standard library only): the watcher reads the current version to compute job ids.
Versions appear whole: a training run writes `.tmp-<version>/` and renames it into place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from pathlib import Path

from common.durable import durable_rename, fsync_dir
from common.errors import ModelError

BASE = "base"
CURRENT_FILE = "current"
WEIGHTS_FILE = "model.pt"
CARD_FILE = "card.json"
HISTORY_FILE = "history.json"
LOCK_FILE = ".lock"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def current_version(models_dir: str | os.PathLike) -> str:
    """The version named by `<models>/current`, or "base" when there is none."""
    try:
        text = (Path(models_dir) / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        return BASE
    if not text or text == BASE:
        return BASE
    if not VERSION_PATTERN.fullmatch(text):
        raise ModelError(f"{Path(models_dir) / CURRENT_FILE}: {text!r} is not a model version name")
    return text


def current_stamp(models_dir: str | os.PathLike) -> tuple[int, int] | None:
    """A cheap fingerprint of `<models>/current` (inode, mtime) to notice a promotion between jobs."""
    try:
        info = os.stat(Path(models_dir) / CURRENT_FILE)
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def weights_path(models_dir: str | os.PathLike, version: str) -> Path:
    """The weights of a fine-tuned version; ModelError when missing."""
    path = Path(models_dir) / version / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"model version {version!r} is current but {path} does not exist")
    return path


def set_current(models_dir: str | os.PathLike, version: str) -> None:
    """Make `version` current atomically (write a temp file, rename it over `current`)."""
    if version != BASE and not VERSION_PATTERN.fullmatch(version):
        raise ModelError(f"{version!r} is not a model version name")
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{CURRENT_FILE}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    durable_rename(tmp, models_dir / CURRENT_FILE)  # workers and the watcher trust it at once


@contextlib.contextmanager
def _locked(models_dir: Path):
    """Serialise promotions and rollbacks between processes (and hosts sharing the folder)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    with open(models_dir / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    durable_rename(tmp, path)


def read_card(models_dir: str | os.PathLike, version: str) -> dict | None:
    """A version's card, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(models_dir) / version / CARD_FILE).read_text())
    except (OSError, ValueError):
        return None


def versions(models_dir: str | os.PathLike) -> list[dict]:
    """Every fine-tuned version (oldest first): {"version", "card", "current"}."""
    models_dir = Path(models_dir)
    current = current_version(models_dir)
    found = []
    if models_dir.is_dir():
        for entry in os.scandir(models_dir):
            if (
                entry.is_dir(follow_symlinks=False)
                and entry.name != BASE
                and VERSION_PATTERN.fullmatch(entry.name)
                and (Path(entry.path) / WEIGHTS_FILE).is_file()
            ):
                card = read_card(models_dir, entry.name) or {}
                found.append(
                    {"version": entry.name, "card": card, "current": entry.name == current}
                )
    return sorted(found, key=lambda v: (v["card"].get("created", ""), v["version"]))


def publish(models_dir: str | os.PathLike, staging: Path, version: str) -> Path:
    """Rename a complete staging folder (weights + card) to `<models>/<version>/`."""
    if not VERSION_PATTERN.fullmatch(version) or version == BASE:
        raise ModelError(f"{version!r} is not a model version name")
    target = Path(models_dir) / version
    if target.exists():
        raise ModelError(f"model version {version!r} exists already at {target}")
    for path in staging.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    fsync_dir(staging)
    return durable_rename(staging, target)


def _history(models_dir: Path) -> dict:
    try:
        data = json.loads((models_dir / HISTORY_FILE).read_text())
        if isinstance(data.get("stack"), list) and isinstance(data.get("log"), list):
            return data
    except (OSError, ValueError, AttributeError):
        pass
    return {"stack": [current_version(models_dir)], "log": []}


def promote(models_dir: str | os.PathLike, version: str, reason: str = "promote") -> str:
    """Make `version` current (pushing it on the history stack); returns the previous one."""
    models_dir = Path(models_dir)
    if version != BASE:
        if not VERSION_PATTERN.fullmatch(version):
            raise ModelError(f"{version!r} is not a model version name")
        if not (models_dir / version / WEIGHTS_FILE).is_file():
            known = ", ".join(v["version"] for v in versions(models_dir)) or "none"
            raise ModelError(f"no model version {version!r} in {models_dir} (versions: {known})")
    with _locked(models_dir):
        previous = current_version(models_dir)
        history = _history(models_dir)
        if not history["stack"] or history["stack"][-1] != previous:
            history["stack"].append(previous)
        if version != previous:
            history["stack"].append(version)
        history["log"].append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "action": reason,
                "version": version,
                "previous": previous,
            }
        )
        set_current(models_dir, version)
        _write_json(models_dir / HISTORY_FILE, history)
    return previous


def rollback(models_dir: str | os.PathLike) -> tuple[str, str]:
    """Return to the version that was current before the current one; (from, to)."""
    models_dir = Path(models_dir)
    with _locked(models_dir):
        current = current_version(models_dir)
        history = _history(models_dir)
        stack = history["stack"]
        if stack and stack[-1] == current:
            stack.pop()
        while stack and stack[-1] != BASE and not (models_dir / stack[-1] / WEIGHTS_FILE).is_file():
            stack.pop()  # a version deleted by hand since
        if not stack:
            raise ModelError(f"nothing to roll back to: {current!r} is the first model in use")
        target = stack[-1]
        history["log"].append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "action": "rollback",
                "version": target,
                "previous": current,
            }
        )
        set_current(models_dir, target)
        _write_json(models_dir / HISTORY_FILE, history)
    return current, target
