"""Claiming complete inbox files: move them into `state/claimed/<job_id>/`, once per content.

A claim is two renames: the files go first into a private `claimed/.incoming-<token>/` folder
(after which no writer can touch them), are hashed there, and the folder then takes its final
name, the job id (input bytes + mask bytes + model version). If that job already exists (the same
file dropped twice), the copy is kept under the existing job's `duplicates/` and nothing is
enqueued. All renames stay inside one file system, so an input is never in two places.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from worker import jobids, state
from worker.inputs import image_stem

log = logging.getLogger("segd.watcher")
INCOMING_PREFIX = ".incoming-"


def _sha256(path: Path) -> str:
    """The content hash of a claimed input: a file's bytes, or a frame folder's files."""
    if path.is_dir() and not path.is_symlink():
        return jobids.folder_sha256(path)
    return jobids.file_sha256(path)


def _move_in(source: Path, target_dir: Path) -> Path:
    """Rename `source` into `target_dir` (copy + fsync + unlink across file systems)."""
    target = target_dir / source.name
    try:
        os.rename(source, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: inbox and state on different file systems
            raise
        if source.is_dir() and not source.is_symlink():  # a frame folder
            shutil.copytree(source, target, symlinks=True)
            for item in target.iterdir():
                if item.is_file() and not item.is_symlink():
                    with open(item, "rb") as handle:
                        os.fsync(handle.fileno())
            shutil.rmtree(source)
            return target
        shutil.copy2(source, target, follow_symlinks=False)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())
        os.unlink(source)
    return target


def claim(
    state_dir: Path,
    image: Path,
    mask: Path | None,
    model_version: str,
    *,
    reuse_image: bool = False,
) -> state.Claim | None:
    """Claim an image (and its mask). Returns the new Claim, or None for a duplicate.

    reuse_image: `image` lives in state/ already (a mask arriving after its image was processed):
    it is hard-linked (or copied) into the new claim instead of moved.
    """
    claimed_root = state_dir / state.CLAIMED
    incoming = claimed_root / f"{INCOMING_PREFIX}{secrets.token_hex(8)}"
    incoming.mkdir(parents=True)
    if reuse_image:
        target = incoming / image.name
        if image.is_dir():  # a frame folder: link (or copy) each frame
            shutil.copytree(image, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(image, target)
        image_in = target
    else:
        image_in = _move_in(image, incoming)
    mask_in = _move_in(mask, incoming) if mask is not None else None
    return settle_incoming(
        state_dir, incoming, image_in.name, mask_in.name if mask_in else None, model_version
    )


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def settle_incoming(
    state_dir: Path, incoming: Path, image: str, mask: str | None, model_version: str
) -> state.Claim | None:
    """Hash an incoming folder and give it its job id (or file it as a duplicate)."""
    image_sha = _sha256(incoming / image)
    mask_sha = _sha256(incoming / mask) if mask else None
    job_id = jobids.job_id(image_sha, mask_sha, model_version)
    new = state.Claim(
        job_id=job_id,
        stem=image_stem(image),
        image=image,
        mask=mask,
        model_version=model_version,
        claimed_at=state.now_iso(),
        seq=time.time_ns(),
    )
    state.write_claim(incoming, new)
    for kind in (state.CLAIMED, state.DONE):
        existing = state.folder(state_dir, kind, job_id)
        if existing.is_dir():
            spare = existing / state.DUPLICATES / incoming.name.removeprefix(INCOMING_PREFIX)
            spare.parent.mkdir(parents=True, exist_ok=True)
            os.rename(incoming, spare)
            log.info(
                "%s: same content as job %s (%s); kept in %s, not segmented again",
                image,
                job_id,
                kind,
                spare,
            )
            return None
    os.rename(incoming, state.folder(state_dir, state.CLAIMED, job_id))
    return new


def latest_for_stem(state_dir: Path, stem: str) -> Path | None:
    """The image (or video) of the newest claimed or done job for `stem` (for a mask arriving
    after it)."""
    best: tuple[int, Path] | None = None
    for kind in (state.CLAIMED, state.DONE):
        root = state_dir / kind
        if not root.is_dir():
            continue
        for entry in os.scandir(root):
            if entry.name.startswith("."):
                continue
            try:
                info = json.loads((Path(entry.path) / state.CLAIM_FILE).read_text())
            except (OSError, ValueError):
                continue
            if info.get("stem") == stem and (best is None or info["seq"] > best[0]):
                best = (info["seq"], Path(entry.path) / info["image"])
    return best[1] if best and best[1].exists() else None


def recover_incoming(state_dir: Path, model_version: str) -> list[state.Claim]:
    """Finish claims a crashed watcher left half-done in `claimed/.incoming-*`."""
    recovered = []
    root = state_dir / state.CLAIMED
    if not root.is_dir():
        return recovered
    for entry in os.scandir(root):
        if not entry.name.startswith(INCOMING_PREFIX):
            continue
        incoming = Path(entry.path)
        files = sorted(
            p.name
            for p in incoming.iterdir()
            if p.name != state.CLAIM_FILE and not p.name.startswith(".")
        )
        masks = [n for n in files if n.lower().endswith(".mask.png")]
        images = [n for n in files if n not in masks]
        if len(images) != 1:
            if not files:
                shutil.rmtree(incoming)  # nothing was moved in yet
            else:
                log.error(
                    "%s: cannot tell which file is the image (%s); left for a person",
                    incoming,
                    files,
                )
            continue
        result = settle_incoming(
            state_dir, incoming, images[0], masks[0] if masks else None, model_version
        )
        if result:
            recovered.append(result)
    return recovered
