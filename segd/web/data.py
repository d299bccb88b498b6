"""What the pages show, read from the same places `segd status` reads: the outbox (results), the
state folder (failures), Redis (queues, workers), the model registry, the file system (free space).

Nothing here writes; every function returns plain data for the templates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from common import registry, state
from common.config import Config
from common.names import RESERVED_NAMES

MANIFEST = "manifest.json"
SEGMENTS = "segments.json"
IMAGE_VIEWS = (("overlay", "overlay.jpg"), ("color", "color.png"), ("index", "index.png"))
MAX_FILES_LISTED = 200


@dataclass
class Entry:
    """One tile of the results gallery: a result folder, or an inbox folder holding results."""

    kind: str  # "result" or "folder"
    path: str  # relative to the outbox, '/'-separated
    name: str
    mtime: float
    manifest: dict = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return "frames" in (self.manifest.get("input") or {})


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def entries(
    outbox: Path, folder: Path, query: str = "", page: int = 1, per_page: int = 24
) -> tuple[list[Entry], int]:
    """The results and inbox folders directly inside `folder` (a folder of the outbox), newest
    first, whose name contains `query` (any case); one page of them and how many there are."""
    found: list[Entry] = []
    root = Path(os.path.realpath(outbox))
    needle = query.casefold()
    try:
        listing = list(os.scandir(folder))
    except OSError:
        return [], 0
    for item in listing:
        if item.name.startswith(".") or not item.is_dir(follow_symlinks=False):
            continue  # .tmp-* folders are results being written
        if needle and needle not in item.name.casefold():
            continue
        manifest = Path(item.path) / MANIFEST
        try:
            mtime = manifest.stat().st_mtime
            kind = "result"
        except OSError:
            mtime = item.stat(follow_symlinks=False).st_mtime
            kind = "folder"
        relative = Path(item.path).relative_to(root).as_posix()
        found.append(Entry(kind, relative, item.name, mtime))
    found.sort(key=lambda e: (-e.mtime, e.name))
    page_entries = found[(page - 1) * per_page : page * per_page]
    for entry in page_entries:
        if entry.kind == "result":
            entry.manifest = read_json(root / entry.path / MANIFEST)
    return page_entries, len(found)


def result(outbox: Path, folder: Path) -> dict:
    """A result folder's manifest, segments (without their RLE), image views and files."""
    root = Path(os.path.realpath(outbox))
    relative = folder.relative_to(root).as_posix()
    segments = read_json(folder / SEGMENTS)
    rows = [
        {k: s.get(k) for k in ("id", "score", "stability", "area", "bbox", "point")}
        for s in segments.get("segments", [])
        if isinstance(s, dict)
    ]
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                files.append(Path(dirpath, name).relative_to(root).as_posix())
    views = [
        (label, f"{relative}/{name}") for label, name in IMAGE_VIEWS if (folder / name).is_file()
    ]
    return {
        "path": relative,
        "name": folder.name,
        "manifest": read_json(folder / MANIFEST),
        "image": segments.get("image") or {},
        "segments": rows,
        "views": views,
        "files": files[:MAX_FILES_LISTED],
        "more_files": max(0, len(files) - MAX_FILES_LISTED),
    }


def input_of(state_dir: Path, job_id: str | None) -> Path | None:
    """The input file of a done job (state/done/<job_id>/<image>), or None."""
    if not job_id:
        return None
    try:
        done = state.folder(state_dir, state.DONE, job_id)
        claim = state.read_claim(done)
        path = state.safe_member(done, claim.image)
    except (OSError, ValueError, TypeError):
        return None
    return path if path is not None and path.is_file() and not path.is_symlink() else None


def failures(state_dir: Path, limit: int | None = None) -> list[dict]:
    """Failed inputs, newest first: {"id", "name", "reason", "detail", "at", "files"}."""
    folder = Path(state_dir) / state.FAILED
    try:
        items = [e for e in os.scandir(folder) if not e.name.startswith(".") and e.is_dir()]
    except OSError:
        return []
    items.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    found = []
    for item in items[:limit]:
        error = state.read_error(Path(item.path))
        inputs = sorted(
            n
            for n in os.listdir(item.path)
            if n.casefold() not in RESERVED_NAMES and not n.startswith(".")
        )
        name = error.get("name") or _claimed_name(Path(item.path)) or (inputs[0] if inputs else "")
        found.append(
            {
                "id": item.name,
                "name": name,
                "reason": error.get("reason"),
                "detail": error.get("detail"),
                "at": error.get("failed_at"),
                "files": inputs,
            }
        )
    return found


def _claimed_name(folder: Path) -> str | None:
    try:
        return state.read_claim(folder).image
    except (OSError, ValueError, TypeError):
        return None


def disks(config: Config) -> list[dict]:
    """Free space of the file systems holding the data folders (each file system once)."""
    seen: dict[int, dict] = {}
    for label in ("inbox", "outbox", "state", "models"):
        path = Path(getattr(config.paths, label))
        try:
            device = os.stat(path).st_dev
            info = os.statvfs(path)
        except OSError:
            continue
        if device in seen:
            seen[device]["folders"].append(label)
            continue
        total, free = info.f_blocks * info.f_frsize, info.f_bavail * info.f_frsize
        seen[device] = {
            "folders": [label],
            "path": str(path),
            "free_bytes": free,
            "total_bytes": total,
            "free_fraction": free / total if total else 0.0,
        }
    return list(seen.values())


def status(config: Config) -> dict:
    """`segd status`'s data, the health check's problems and the free disk space."""
    from segd import health
    from segd import status as status_module

    data = status_module.collect(config)
    data["problems"] = health.problems(config) if data["redis"]["ok"] else []
    if not data["redis"]["ok"]:
        data["problems"] = [f"Redis is unreachable: {data['redis'].get('error')}"]
    data["disks"] = disks(config)
    return data


def models(config: Config) -> dict:
    """The model versions (newest first), which is current, and each card's scores."""
    models_dir = Path(config.paths.models)
    current = registry.current_version(models_dir)
    rows = []
    for version in reversed(registry.versions(models_dir)):
        card = version["card"]
        validation = card.get("validation") or {}
        rows.append(
            {
                "version": version["version"],
                "current": version["current"],
                "created": card.get("created"),
                "dataset": (card.get("dataset") or {}).get("path"),
                "steps": card.get("steps"),
                "miou_before": validation.get("miou_before"),
                "miou_after": validation.get("miou_after"),
                "history": validation.get("history") or [],
                "promoted": card.get("promoted"),
                "reason": card.get("promotion_reason"),
                "card": card,
            }
        )
    return {"current": current, "versions": rows}


def human_bytes(count: float) -> str:
    """1536 → '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
