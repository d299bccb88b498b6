"""The `segd retry` command line: arguments and one printed line per outcome (see segd.retry)."""

from __future__ import annotations

import argparse
import sys

from common.config import Config
from common.errors import EXIT_CONFIG, EXIT_FAILED_INPUTS, EXIT_OK
from common.names import shown


def add_command(commands, common: argparse.ArgumentParser) -> None:
    """Add `segd retry [JOB_ID|NAME ...] [--all]` to the subcommands."""
    retry_cmd = commands.add_parser(
        "retry",
        parents=[common],
        help="send failed inputs through the queue again",
        description="Send inputs in paths.state/failed/ through the queue again, once the cause of "
        "their failure is fixed: a job's input goes back to state/claimed/ and is enqueued; an "
        "entry the watcher refused goes back into the inbox when it would be accepted now. "
        "Idempotent; what cannot be retried is refused with the reason (exit 1).",
    )
    retry_cmd.add_argument(
        "targets",
        nargs="*",
        metavar="JOB_ID|NAME",
        help="a failed entry's folder name (job id) or its input's name (x.jpg, visit/x.jpg)",
    )
    retry_cmd.add_argument("--all", action="store_true", help="every failed input")


def cmd(config: Config, targets: list[str], all_failed: bool) -> int:
    """Send failed inputs through the queue again; one line per input, exit 1 if any was refused."""
    from segd.retry import retry

    if not targets and not all_failed:
        print(
            "segd retry: name a failed input (job id, folder name or file name) or give --all",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    outcomes = retry(config, targets, all_failed=all_failed)
    if not outcomes:
        print("nothing failed: nothing to retry")
    for outcome in outcomes:
        if outcome.refused:
            print(f"refused {shown(outcome.target)}: {outcome.refused}")
        else:
            job = f" as job {outcome.job_id}" if outcome.job_id else ""
            print(f"retrying {shown(outcome.target)}{job}")
    return EXIT_FAILED_INPUTS if any(o.refused for o in outcomes) else EXIT_OK
