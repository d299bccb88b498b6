"""The model registry on disk: which model version the workers should use.

    <paths.models>/base/<official file>.pt    official checkpoints (`segd models fetch`)
    <paths.models>/<version>/model.pt          a fine-tuned model (written by training jobs)
    <paths.models>/current                     a text file naming the version in use; absent = "base"

Light (standard library only): the watcher reads the current version to compute job ids.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from worker.errors import ModelError

BASE = "base"
CURRENT_FILE = "current"
WEIGHTS_FILE = "model.pt"
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
    os.replace(tmp, models_dir / CURRENT_FILE)
