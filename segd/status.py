"""`segd status`: queues, workers, recent throughput and the latest failures.

Counts of done and failed inputs come from the state folder (the source of truth); queue depths
and workers from Redis. Works without Redis too: it then says Redis is unreachable.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from common import queues, state
from common.config import Config
from common.diskspace import low_space
from common.liveness import INFO_KEY, live_workers, read_info, worker_alive
from common.names import shown
from common.waiting import waiting_masks
from watcher.claims import INCOMING_PREFIX

HOUR_S = 3600


def _recent(folder: Path, since: float) -> list[os.DirEntry]:
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    return [e for e in entries if e.stat().st_mtime >= since]


def _ended_since(done_root: Path, since: float) -> int:
    """Done jobs that ended at or after `since` (unix time), by their `ended.json`. A rename keeps
    a folder's mtime (the claim time) and a duplicate drop refreshes it, so the mtime only rules
    folders out (writing ended.json at the end sets it: a folder untouched since `since` cannot
    have ended later); jobs that ended before segd wrote ended.json are not counted. Re-runs of a
    done job (the same picture for another name, or after a new model) end under its
    `duplicates/` and count too."""
    count = 0
    for entry in _recent(done_root, since):
        runs = [Path(entry.path)]
        runs += [Path(e.path) for e in _recent(Path(entry.path) / state.DUPLICATES, since)]
        for run in runs:
            ended = state.read_ended(run)
            try:
                at = dt.datetime.fromisoformat(ended["ended_at"]).timestamp() if ended else None
            except (KeyError, TypeError, ValueError):
                at = None
            if at is not None and at >= since:
                count += 1
    return count


def collect(config: Config, failures: int = 5) -> dict:
    """Everything `segd status` shows, as JSON-ready data."""
    now = time.time()
    state_dir = Path(config.paths.state)
    done = _ended_since(state_dir / state.DONE, now - HOUR_S)
    failed = _recent(state_dir / state.FAILED, now - HOUR_S)
    data: dict = {
        "redis": {"url": queues.shown_redis_url(config), "ok": False},
        "queues": {},
        "workers": [],
        "last_hour": {
            "done": done,
            "failed": len(failed),
            "files_per_minute": round(done / 60, 2),
        },
        "waiting": {
            "inbox": _waiting_in_inbox(Path(config.paths.inbox)),
            "claimed": _claimed_count(state_dir),
        },
        "waiting_masks": waiting_masks(Path(config.paths.inbox), now),
        "latest_failures": [],
        "low_disk": [
            {
                "role": item.role,
                "path": str(item.path),
                "free_bytes": item.free_bytes,
                "floor_bytes": item.floor_bytes,
            }
            for item in low_space(config)
        ],
    }
    newest = sorted(
        _recent(state_dir / state.FAILED, 0), key=lambda e: e.stat().st_mtime, reverse=True
    )
    for entry in newest[:failures]:
        error = state.read_error(Path(entry.path))
        data["latest_failures"].append(
            {
                "id": entry.name,
                "name": error.get("name") or _claimed_name(Path(entry.path)),
                "reason": error.get("reason"),
                "at": error.get("failed_at"),
            }
        )
    try:
        connection = queues.connect(config)
        connection.ping()
        data["redis"]["ok"] = True
        for name in queues.QUEUES:
            queue = queues.queue(name, connection)
            data["queues"][name] = {
                "queued": queue.count,
                "running": queue.started_job_registry.count,
                "failed": queue.failed_job_registry.count,
            }
        found, _unreadable = live_workers(connection)
        for worker in found:
            raw = connection.get(INFO_KEY.format(name=worker.name))
            info = read_info(raw) or {}
            data["workers"].append(
                {
                    "name": worker.name,
                    "queues": worker.queue_names(),
                    "state": str(worker.get_state()),
                    "current_job": worker.get_current_job_id(),
                    "host": info.get("host", worker.hostname),
                    "device": info.get("device"),
                    "model": info.get("model"),
                    "model_version": info.get("model_version"),
                    "random_weights": info.get("random_weights"),
                    "paused": info.get("paused"),
                    "progress": _progress(connection, worker.get_current_job_id()),
                    "heartbeat": worker_alive(connection, worker.name) if raw else None,
                }
            )
        data["training"] = _training_runs(connection)
    except (RedisError, OSError) as exc:
        data["redis"]["error"] = str(exc)
    return data


def _training_runs(connection) -> list[dict]:
    """Running training jobs with their progress (the job's meta, fed by the run)."""
    runs = []
    started = StartedJobRegistry(queues.TRAIN_QUEUE, connection=connection)
    for job_id in started.get_job_ids(cleanup=False):
        try:
            job = queues.SegdJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        except NoSuchJobError:
            continue
        meta = job.meta or {}
        runs.append(
            {
                "id": job_id,
                "dataset": (job.kwargs or {}).get("dataset"),
                **{
                    k: meta.get(k)
                    for k in ("phase", "step", "steps", "val_miou", "best_miou", "eta_s")
                },
            }
        )
    return runs


def _progress(connection, job_id: str | None) -> dict | None:
    """A running video job's {"frames_done", "frames_total"} from its meta, else None."""
    if not job_id:
        return None
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except Exception:  # gone or unreadable: status shows what it can
        return None
    return job.get_meta(refresh=False).get("progress")


def _scan(folder: Path):
    try:
        yield from os.scandir(folder)
    except FileNotFoundError:
        return


def _claimed_count(state_dir: Path) -> int:
    """Claims waiting or running: claimed/<job id>/, and copies of a picture waiting for its
    job before they are claimed for another name (hashed: their claim.json is written)."""
    count = 0
    for entry in _scan(state_dir / state.CLAIMED):
        if not entry.name.startswith("."):
            count += 1
        elif entry.name.startswith(INCOMING_PREFIX):
            count += os.path.isfile(os.path.join(entry.path, state.CLAIM_FILE))
    return count


def _waiting_in_inbox(inbox: Path) -> int:
    """Inbox entries not claimed yet: files, and folders that still hold a file somewhere below.
    A batch folder whose files were all claimed stays in the inbox for more and waits for
    nothing; writers' temp files (a leading '.') are left alone by the watcher and not counted."""
    count = 0
    for entry in _scan(inbox):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir(follow_symlinks=False):
            count += 1
        elif any(not name.startswith(".") for _, _, files in os.walk(entry.path) for name in files):
            count += 1
    return count


def _claimed_name(folder: Path) -> str | None:
    try:
        claim = state.read_claim(folder)
    except (OSError, ValueError, TypeError):
        return None
    return f"{claim.folder}/{claim.image}" if claim.folder else claim.image


def render(data: dict) -> str:
    """The human-readable status."""
    lines = []
    redis = data["redis"]
    lines.append(
        f"Redis    {redis['url']}: "
        + ("ok" if redis["ok"] else f"UNREACHABLE ({redis.get('error')})")
    )
    for name, q in data["queues"].items():
        lines.append(
            f"queue    {name:<8} queued {q['queued']:>5}  running {q['running']:>3}  failed {q['failed']:>4}"
        )
    if not data["workers"]:
        lines.append("workers  none")
    for w in data["workers"]:
        random = " RANDOM WEIGHTS" if w.get("random_weights") else ""
        job = f"  job {w['current_job']}" if w.get("current_job") else ""
        if w.get("progress"):
            done, total = w["progress"]["frames_done"], w["progress"]["frames_total"]
            job += f" (frames {done}/{total if total is not None else '?'})"
        # A trainer holds no model (each run loads its own in a fresh process): no model part.
        serves = f" [{', '.join(w['queues'])}]" if w.get("queues") else ""
        device = f" ({w['device']})" if w.get("device") else ""
        model = (
            f", model {w['model']} version {w.get('model_version')}{random}"
            if w.get("model")
            else ""
        )
        dead = " (NO HEARTBEAT: dead?)" if w.get("heartbeat") is False else ""
        paused = f" (paused: {w['paused']})" if w.get("paused") else ""
        lines.append(
            f"worker   {w['name']}{serves} on {w['host']}{device}{model}: {w['state']}{job}{paused}{dead}"
        )
    for run in data.get("training", []):
        eta = f", ETA {run['eta_s'] / 60:.0f} min" if run.get("eta_s") else ""
        miou = (
            f", val mIoU {run['val_miou']:.4f} (best {run['best_miou']:.4f})"
            if run.get("val_miou") is not None and run.get("best_miou") is not None
            else ""
        )
        lines.append(
            f"training {run['id']} on {run['dataset']}: {run.get('phase') or 'starting'}, "
            f"step {run.get('step') or 0}/{run.get('steps') or '?'}{miou}{eta}"
        )
    hour = data["last_hour"]
    lines.append(
        f"last hour  done {hour['done']}  failed {hour['failed']}  ({hour['files_per_minute']} files/min)"
    )
    for low in data.get("low_disk", []):
        lines.append(
            f"DISK LOW {low['role']} {low['path']}: {low['free_bytes']} bytes free, below "
            f"worker.min_free_bytes = {low['floor_bytes']}: workers take no job"
        )
    waiting = data["waiting"]
    lines.append(f"waiting    inbox {waiting['inbox']}  claimed {waiting['claimed']}")
    for mask in data.get("waiting_masks", []):
        lines.append(f"  mask {mask['name']} waits for its image ({mask['waited_s']:.0f} s)")
    if data["latest_failures"]:
        lines.append("latest failures:")
        for failure in data["latest_failures"]:
            name = shown(failure["name"] or "?")
            lines.append(f"  {failure['at']}  {name}: {shown(failure['reason'] or '')}")
    return "\n".join(lines)
