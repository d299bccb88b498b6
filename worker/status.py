"""`segd status`: queues, workers, recent throughput and the latest failures.

Counts of done and failed inputs come from the state folder (the source of truth); queue depths
and workers from Redis. Works without Redis too: it then says Redis is unreachable.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from worker import queues, state
from worker.config import Config
from worker.rqworker import INFO_KEY

HOUR_S = 3600


def _recent(folder: Path, since: float) -> list[os.DirEntry]:
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    return [e for e in entries if e.stat().st_mtime >= since]


def collect(config: Config, failures: int = 5) -> dict:
    """Everything `segd status` shows, as JSON-ready data."""
    now = time.time()
    state_dir = Path(config.paths.state)
    done = _recent(state_dir / state.DONE, now - HOUR_S)
    failed = _recent(state_dir / state.FAILED, now - HOUR_S)
    data: dict = {
        "redis": {"url": queues.redis_url(config), "ok": False},
        "queues": {},
        "workers": [],
        "last_hour": {
            "done": len(done),
            "failed": len(failed),
            "files_per_minute": round(len(done) / 60, 2),
        },
        "waiting": {
            "inbox": sum(1 for _ in _scan(Path(config.paths.inbox))),
            "claimed": sum(
                1 for e in _scan(state_dir / state.CLAIMED) if not e.name.startswith(".")
            ),
        },
        "latest_failures": [],
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
        for worker in Worker.all(connection=connection):
            raw = connection.get(INFO_KEY.format(name=worker.name))
            info = json.loads(raw) if raw else {}
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
                    "progress": _progress(connection, worker.get_current_job_id()),
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


def _claimed_name(folder: Path) -> str | None:
    try:
        return state.read_claim(folder).image
    except (OSError, ValueError, TypeError):
        return None


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
        lines.append(
            f"worker   {w['name']}{serves} on {w['host']}{device}{model}: {w['state']}{job}"
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
    waiting = data["waiting"]
    lines.append(f"waiting    inbox {waiting['inbox']}  claimed {waiting['claimed']}")
    if data["latest_failures"]:
        lines.append("latest failures:")
        for failure in data["latest_failures"]:
            lines.append(f"  {failure['at']}  {failure['name']}: {failure['reason']}")
    return "\n".join(lines)
