"""`segd train`, `segd trainer` and `segd models list | promote | rollback`.

Light: enqueueing and following a run, and managing versions, need neither torch nor sam2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from redis.exceptions import RedisError

from common import queues, registry
from common.config import TRAINING_JOB_OPTIONS, Config, training_settings
from common.errors import EXIT_FAILED_INPUTS, EXIT_OK, ConfigError, SegdError
from worker.training import datasets


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: use KEY=VALUE (e.g. --set batch_images=8)")
        options[key.strip()] = yaml.safe_load(value)
    return options


def cmd_train(config: Config, args: argparse.Namespace) -> int:
    """Check the dataset and options here, enqueue the run, and optionally follow it."""
    options = _parse_sets(args.set or [])
    for key in ("steps", "base", "promote"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.train_encoder:
        options["train_encoder"] = True
    training_settings(config, options)  # a bad option fails here, not on the trainer
    # outside the root (the folder, or any folder or file inside it): refused now
    path = datasets.resolve(args.dataset, config.training.datasets_root)
    datasets.refuse_outside_links(path, config.training.datasets_root)
    if args.run:
        options["run"] = args.run
    connection = queues.connect(config)
    try:
        job = queues.enqueue_train(
            queues.queue(queues.TRAIN_QUEUE, connection),
            args.dataset,
            options,
            timeout_s=config.training.job_timeout_s,
            retries=config.training.retries,
        )
    except RedisError as exc:
        raise SegdError(
            f"cannot reach Redis at {queues.shown_redis_url(config)} ({exc}); start the service "
            "(segd up) or set redis.url"
        ) from None
    print(f"enqueued training job {job.id} on queue {queues.TRAIN_QUEUE!r} ({args.dataset})")
    if not args.follow:
        # The password stays out of the hint: `***` is for the reader to fill in.
        print(f"follow it with: segd status, or rq info -u {queues.shown_redis_url(config)} train")
        return EXIT_OK
    return follow(job.id, connection)


def follow(job_id: str, connection, poll_s: float = 0.5) -> int:
    """A progress bar fed from the job's meta until the run ends; 0 when it succeeded."""
    from rq.job import Job, JobStatus
    from tqdm import tqdm

    bar = None
    last_shown = None
    try:
        while True:
            job = Job.fetch(job_id, connection=connection, serializer=queues.JSONSerializer)
            status, meta = job.get_status(), job.meta
            steps = meta.get("steps")
            if steps and bar is None:
                bar = tqdm(total=steps, unit="step", dynamic_ncols=True, file=sys.stderr)
            if bar is not None:
                post = {}
                if meta.get("loss") is not None:
                    post["loss"] = f"{meta['loss']:.4f}"
                if meta.get("val_miou") is not None:
                    post["val mIoU"] = f"{meta['val_miou']:.4f}"
                shown = (meta.get("step", 0), meta.get("phase", status), tuple(post.items()))
                if shown != last_shown:  # redraw on change only: a log file gets one line each
                    last_shown = shown
                    bar.n = shown[0]
                    bar.set_description(shown[1], refresh=False)
                    bar.set_postfix(post, refresh=True)
            if status == JobStatus.FINISHED:
                if bar is not None:
                    bar.close()
                summary = job.return_value() or {}
                print(
                    f"version {summary.get('version')}: validation mIoU "
                    f"{summary.get('miou_before')} → {summary.get('miou_after')} "
                    f"after {summary.get('steps')} steps; "
                    + ("promoted" if summary.get("promoted") else "not promoted")
                    + f" ({summary.get('reason')})"
                )
                return EXIT_OK
            if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                if bar is not None:
                    bar.close()
                result = job.latest_result()
                text = (result.exc_string or "").strip() if result else ""
                lines = [line for line in text.splitlines() if line.strip()]
                reason = _error_tail(lines) or status
                print(f"training job {job_id} {status}: {reason}", file=sys.stderr)
                return EXIT_FAILED_INPUTS
            time.sleep(poll_s)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print(f"\nstopped following; job {job_id} goes on (segd status shows it)", file=sys.stderr)
        return 130


def _error_tail(lines: list[str]) -> str:
    """The exception line of a traceback and what follows it (a DatasetError's list)."""
    for index in range(len(lines) - 1, -1, -1):
        if not lines[index].startswith((" ", "\t")) and ":" in lines[index]:
            return "\n".join(lines[index:])
    return "\n".join(lines[-5:])


def cmd_models_list(config: Config, as_json: bool) -> int:
    models_dir = Path(config.paths.models)
    found = registry.versions(models_dir)
    current = registry.current_version(models_dir)
    if as_json:
        print(json.dumps({"current": current, "versions": found}, indent=2))
        return EXIT_OK
    rows = [("", "VERSION", "CREATED", "BASE", "DATASET", "STEPS", "VAL mIoU before → after")]
    rows.append(
        ("*" if current == registry.BASE else "", registry.BASE, "", config.model.size, "", "", "")
    )
    for entry in found:
        card = entry["card"]
        val = card.get("validation", {})
        rows.append(
            (
                "*" if entry["current"] else "",
                entry["version"],
                card.get("created", "?")[:19],
                card.get("base", {}).get("version", "?"),
                Path(card.get("dataset", {}).get("path", "?")).name,
                str(card.get("steps", "?")),
                f"{val.get('miou_before', '?')} → {val.get('miou_after', '?')}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return EXIT_OK


def cmd_models_promote(config: Config, version: str) -> int:
    previous = registry.promote(config.paths.models, version, reason="promote")
    print(f"current model: {version} (was {previous}); workers switch before their next job")
    return EXIT_OK


def cmd_models_rollback(config: Config) -> int:
    before, after = registry.rollback(config.paths.models)
    print(f"current model: {after} (was {before}); workers switch before their next job")
    return EXIT_OK


def add_commands(commands, models_commands, common) -> None:
    """Register the training commands on `segd`'s sub-parsers."""
    train = commands.add_parser(
        "train",
        parents=[common],
        help="fine-tune on a labelled folder (enqueues a training job)",
        description="Enqueue a training job on queue 'train' for a labelled folder under "
        "training.datasets_root (images/ + labels/ [+ val/], or LabPics' Simple/Train). A trainer "
        "(segd trainer, or segd up) runs it; the new version becomes current if it beats the "
        "current model on the validation set.",
    )
    train.add_argument("dataset", metavar="DATASET", help="folder, absolute or under the root")
    train.add_argument("--steps", type=int, help="training steps (default: training.steps)")
    train.add_argument("--follow", action="store_true", help="show progress until it ends")
    train.add_argument(
        "--train-encoder", action="store_true", help="also fine-tune the image encoder"
    )
    train.add_argument("--base", help='start from "current" (default), "base" or a version')
    train.add_argument(
        "--promote",
        choices=["if_better", "always", "never"],
        help="always: only when training.allow_job_promote is true",
    )
    train.add_argument("--run", help="run name: the same name resumes a crashed run")
    train.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help=f"any training option for this run ({', '.join(sorted(TRAINING_JOB_OPTIONS))})",
    )

    trainer = commands.add_parser(
        "trainer",
        parents=[common],
        help="run the training worker alone",
        description="Serve the 'train' queue; each run starts in a fresh process (fresh CUDA "
        "context, memory returned when it ends). SIGTERM lets the running job finish.",
    )
    trainer.add_argument("--name", help="worker name (default: segd-trainer-<host>-<pid>)")
    trainer.add_argument("--burst", action="store_true", help="exit when the queue is empty")

    listing = models_commands.add_parser(
        "list", parents=[common], help="list model versions", description="List model versions."
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    promote = models_commands.add_parser(
        "promote",
        parents=[common],
        help="make a version current",
        description="Make VERSION current ('base' for the base checkpoint); workers switch "
        "between jobs, without a restart.",
    )
    promote.add_argument("version", metavar="VERSION")
    models_commands.add_parser(
        "rollback",
        parents=[common],
        help="go back to the previous current version",
        description="Make the version that was current before the current one current again.",
    )


def dispatch(config: Config, args: argparse.Namespace) -> int | None:
    """Run a training command; None when `args` names none of them."""
    if args.command == "train":
        return cmd_train(config, args)
    if args.command == "trainer":
        from worker.service.train_worker import run

        return run(config, name=args.name, burst=args.burst)
    if args.command == "models":
        if args.models_command == "list":
            return cmd_models_list(config, args.json)
        if args.models_command == "promote":
            return cmd_models_promote(config, args.version)
        if args.models_command == "rollback":
            return cmd_models_rollback(config)
    return None
