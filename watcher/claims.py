"""Claiming complete inbox files: move them into `state/claimed/<job_id>/`, once per content.

A claim is two renames: the files go first into a private `claimed/.incoming-<token>/` folder
(after which no writer can touch them), are hashed there, and the folder then takes its final
name, the job id (input bytes + mask bytes + model version). If that job already exists (the same
file dropped twice), the copy is kept under the existing job's `duplicates/` and nothing is
enqueued, unless that job is done and the outbox holds no result of this input under the copy's
own folder and name (the same picture under another name or in another folder gets its own
result: the outbox mirrors the inbox), or only another model version's (a re-drop after a
promotion or a rollback): then it is segmented again. A copy for another folder or name that
arrives while its job is still claimed is a `Twin`: it waits, hashed, in its incoming folder
until that job has left claimed/, and is then settled again (`settle_twin`). All renames stay
inside one file system, so an input is never in two places, and each is made durable
(`common.durable.durable_rename`) before the next step relies on it.

A writer can keep writing through a descriptor it opened before the rename: size and mtime are
compared before and after hashing, and a file that changed is put back in the inbox, unclaimed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from common import jobids, names, published, state
from common.durable import durable_rename, fsync_dir
from common.names import image_stem, shown

log = logging.getLogger("segd.watcher")
INCOMING_PREFIX = ".incoming-"
FOLDER_HINT = ".folder"  # in an incoming folder: the input's inbox folder, for recover_incoming


@dataclass(frozen=True)
class Twin:
    """An input with the bytes of job `holder`, which is still being segmented for another
    folder or name: it waits in `incoming` (hashed, its claim.json written) until `holder` has
    left claimed/, then `settle_twin` claims it for a result of its own (or files it as a
    duplicate, if by then one is published under its name)."""

    incoming: Path
    holder: str
    claim: state.Claim


def _sha256(path: Path) -> str:
    """The content hash of a claimed input: a file's bytes, or a frame folder's files."""
    if path.is_dir() and not path.is_symlink():
        return jobids.folder_sha256(path)
    return jobids.file_sha256(path)


def _signature(path: Path) -> tuple[int, ...]:
    """What a writer changes: a file's (size, mtime_ns); a folder's entry count, total size and
    newest mtime."""
    info = os.lstat(path)
    if not path.is_dir() or path.is_symlink():
        return (info.st_size, info.st_mtime_ns)
    count = total = newest = 0
    for entry in os.scandir(path):
        entry_info = entry.stat(follow_symlinks=False)
        count, total = count + 1, total + entry_info.st_size
        newest = max(newest, entry_info.st_mtime_ns)
    return (count, total, newest)


def stable_sha256(path: Path) -> str | None:
    """The content hash of `path`, or None when its size or mtime changed while it was hashed
    (a writer still holds it open)."""
    before = _signature(path)
    digest = _sha256(path)
    return digest if _signature(path) == before else None


def _move_in(source: Path, target_dir: Path) -> Path:
    """Rename `source` into `target_dir` durably (copy + fsync + unlink across file systems)."""
    target = target_dir / source.name
    try:
        return durable_rename(source, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: inbox and state on different file systems
            raise
    if source.is_dir() and not source.is_symlink():  # a frame folder
        shutil.copytree(source, target, symlinks=True)
        for item in target.iterdir():
            if item.is_file() and not item.is_symlink():
                with open(item, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(target)
        fsync_dir(target_dir)  # the copy is on disk before the original goes
        shutil.rmtree(source)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
        with open(target, "rb") as handle:
            os.fsync(handle.fileno())
        fsync_dir(target_dir)  # the copy is on disk before the original goes
        os.unlink(source)
    fsync_dir(source.parent)
    return target


def claim(
    state_dir: Path,
    image: Path,
    mask: Path | None,
    model_version: str,
    *,
    reuse_image: bool = False,
    outbox: Path | None = None,
    folder: str = "",
) -> state.Claim | Twin | None:
    """Claim an image (and its mask). Returns the new Claim, a Twin that waits, or None for a
    duplicate or a file that changed while it was hashed (put back in the inbox: its writer is
    not done).

    reuse_image: `image` lives in state/ already (a mask arriving after its image was processed):
    it is hard-linked (or copied) into the new claim instead of moved.
    outbox: where results are published (None: every copy of a job's bytes is a duplicate);
    see the module's docstring for when the same bytes are segmented again.
    folder: the inbox folder the image came from (relative, '' = the inbox itself).
    """
    claimed_root = state_dir / state.CLAIMED
    incoming = claimed_root / f"{INCOMING_PREFIX}{secrets.token_hex(8)}"
    incoming.mkdir(parents=True)
    if folder:  # a crash before claim.json is written must not lose where the input came from
        (incoming / FOLDER_HINT).write_text(folder)
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
    image_sha = stable_sha256(image_in)
    mask_sha = stable_sha256(mask_in) if mask_in is not None else None
    if image_sha is None or (mask_in is not None and mask_sha is None):
        _put_back(incoming, image, image_in, mask, mask_in, reuse_image)
        return None
    return settle_incoming(
        state_dir,
        incoming,
        image_in.name,
        mask_in.name if mask_in else None,
        model_version,
        shas=(image_sha, mask_sha),
        outbox=outbox,
        folder=folder,
    )


def _put_back(incoming, image, image_in, mask, mask_in, reused: bool) -> None:
    """Return files that changed while being hashed to where they came from, unclaimed."""
    changed = [p.name for p in (image_in, mask_in) if p is not None]
    if reused:
        shutil.rmtree(image_in) if image_in.is_dir() else image_in.unlink()
    else:
        _move_in(image_in, image.parent)
    if mask_in is not None:
        _move_in(mask_in, mask.parent)
    shutil.rmtree(incoming, ignore_errors=True)
    log.info("%s changed while it was hashed (still being written); left in the inbox", changed)


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def settle_incoming(
    state_dir: Path,
    incoming: Path,
    image: str,
    mask: str | None,
    model_version: str,
    *,
    shas: tuple[str, str | None] | None = None,
    outbox: Path | None = None,
    folder: str = "",
) -> state.Claim | Twin | None:
    """Hash an incoming folder (unless `shas` gives the hashes) and give it its job id, file it
    as a duplicate (None), or let it wait for its twin (a Twin)."""
    if shas is None:
        shas = (_sha256(incoming / image), _sha256(incoming / mask) if mask else None)
    image_sha, mask_sha = shas
    job_id = jobids.job_id(image_sha, mask_sha, model_version)
    new = state.Claim(
        job_id=job_id,
        stem=image_stem(image),
        image=image,
        mask=mask,
        model_version=model_version,
        claimed_at=state.now_iso(),
        seq=time.time_ns(),
        image_sha256=image_sha,
        mask_sha256=mask_sha,
        folder=folder,
    )
    (incoming / FOLDER_HINT).unlink(missing_ok=True)
    state.write_claim(incoming, new)
    for kind in (state.CLAIMED, state.DONE):
        existing = state.folder(state_dir, kind, job_id)
        if existing.is_dir():
            if kind == state.DONE and _needs_own_result(outbox, new):
                log.info(
                    "%s: same content as job %s, but no result of it from this model is "
                    "published under this name; segmenting it again",
                    shown(f"{folder}/{image}" if folder else image),
                    job_id,
                )
                break
            if kind == state.CLAIMED and outbox is not None:
                holder = _destination(existing)
                if holder is not None and holder != (new.folder, new.stem):
                    log.info(
                        "%s: same content as job %s, which is being segmented for %s; it waits "
                        "for that job, then gets a result of its own",
                        shown(f"{folder}/{image}" if folder else image),
                        job_id,
                        shown("/".join(filter(None, holder))),
                    )
                    return Twin(incoming, job_id, new)
            spare = existing / state.DUPLICATES / incoming.name.removeprefix(INCOMING_PREFIX)
            if not spare.parent.is_dir():
                spare.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(existing)
            durable_rename(incoming, spare)
            log.info(
                "%s: same content as job %s (%s); kept in %s, not segmented again",
                image,
                job_id,
                kind,
                spare,
            )
            return None
    durable_rename(incoming, state.folder(state_dir, state.CLAIMED, job_id))
    return new


def settle_twin(
    state_dir: Path, twin: Twin, model_version: str, outbox: Path
) -> state.Claim | Twin | None:
    """Settle a Twin again once its holder left claimed/ (done, failed, or re-keyed to another
    model version): claimed for a result of its own, a duplicate, or (its bytes claimed again
    meanwhile for yet another name) a Twin that waits once more."""
    made = twin.claim
    return settle_incoming(
        state_dir,
        twin.incoming,
        made.image,
        made.mask,
        model_version,
        shas=(str(made.image_sha256), made.mask_sha256),
        outbox=outbox,
        folder=made.folder,
    )


def _destination(claim_dir: Path) -> tuple[str, str] | None:
    """(inbox folder, stem) of the claim in `claim_dir`; None when unreadable."""
    try:
        made = state.read_claim(claim_dir)
    except (OSError, ValueError, TypeError):
        return None
    return made.folder, made.stem


def _needs_own_result(outbox: Path | None, claim: state.Claim) -> bool:
    """True when the input of a done job, claimed again as `claim`, must be segmented again:
    the outbox holds no result of it under the claim's own folder and stem (`outbox/<folder>/
    <stem>/`, or `<stem>~N` after a collision), or one made by another model version."""
    if outbox is None:
        return False
    found = published.locate(outbox, claim.folder, claim.stem, claim.image_sha256)
    if found is None:
        return True
    version = published.model_version(found)
    return version is not None and version != claim.model_version


def _file_reserved_inputs(state_dir: Path, incoming: Path) -> None:
    """An input named like segd's own files (claimed before such names were refused: a frame
    folder `claim.json`, `error.json`, `duplicates`) is moved whole to state/failed/ with its
    reason, so recovery neither mistakes it for bookkeeping nor deletes it."""
    for entry in os.scandir(incoming):
        if entry.name.casefold() not in names.RESERVED_NAMES:
            continue
        if entry.name == state.CLAIM_FILE and entry.is_file(follow_symlinks=False):
            continue  # the claim itself
        target = state.fail_entry(
            state_dir, Path(entry.path), names.reserved_name_reason(entry.name) or "reserved"
        )
        log.error("%s: an input named like segd's own files; moved to %s", entry.path, target)


def _remove_if_empty(incoming: Path) -> None:
    """Remove an incoming folder that holds no input: only segd's own leftovers (a regular
    claim.json, a hidden temp file of replace_json) are unlinked, then os.rmdir, which fails on
    anything else, which is then left for a person. Never a recursive delete on a guess."""
    for entry in os.scandir(incoming):
        leftover = entry.name == state.CLAIM_FILE or entry.name.startswith(".")
        if leftover and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    try:
        os.rmdir(incoming)
    except OSError:
        log.error(
            "%s: holds something other than an input (%s); left for a person",
            incoming,
            sorted(os.listdir(incoming)),
        )


def recover_incoming(
    state_dir: Path, model_version: str, outbox: Path | None = None
) -> list[state.Claim | Twin]:
    """Finish claims a crashed or stopped watcher left in `claimed/.incoming-*` (half-done, or
    twins that waited; `outbox`: see `claim`)."""
    recovered: list[state.Claim | Twin] = []
    root = state_dir / state.CLAIMED
    if not root.is_dir():
        return recovered
    for entry in os.scandir(root):
        if not entry.name.startswith(INCOMING_PREFIX):
            continue
        incoming = Path(entry.path)
        _file_reserved_inputs(state_dir, incoming)
        files = sorted(
            p.name
            for p in incoming.iterdir()
            if p.name != state.CLAIM_FILE and not p.name.startswith(".")
        )
        masks = [n for n in files if n.lower().endswith(".mask.png")]
        images = [n for n in files if n not in masks]
        if len(images) != 1:
            if not files:
                _remove_if_empty(incoming)  # nothing was moved in yet
            else:
                log.error(
                    "%s: cannot tell which file is the image (%s); left for a person",
                    incoming,
                    files,
                )
            continue
        result = settle_incoming(
            state_dir,
            incoming,
            images[0],
            masks[0] if masks else None,
            model_version,
            outbox=outbox,
            folder=_incoming_folder(incoming),
        )
        if result:
            recovered.append(result)
    return recovered


def _incoming_folder(incoming: Path) -> str:
    """The inbox folder of an incoming folder's input: its hint (written first), else its
    claim.json (written once it was hashed: a twin that waited), else '' (the inbox)."""
    try:
        return (incoming / FOLDER_HINT).read_text()
    except FileNotFoundError:
        pass
    try:
        return state.read_claim(incoming).folder
    except (OSError, ValueError, TypeError):
        return ""
