"""The `segd` command: a thin argparse layer over typed functions that return an exit code.

Heavy modules (torch, sam2) are imported inside the commands that need them, so `segd --help`
and `segd models fetch` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from common import __version__
from common.config import Config, load_config
from common.errors import EXIT_FAILED_INPUTS, EXIT_OK, SegdError
from segd import retry_command, train
from segd.web import cli as web_cli

log = logging.getLogger("segd")


def _collect_inputs(images: list[Path], mask: Path | None) -> list[tuple[Path, Path | None]]:
    """Pair each image with its region mask: --mask for a single image, else `<stem>.mask.png`
    beside it when present. Mask files named among the images are used as masks, not images."""
    from common.names import MASK_SUFFIX, mask_path_for

    images = [p for p in images if not (len(images) > 1 and p.name.lower().endswith(MASK_SUFFIX))]
    if mask is not None:
        return [(images[0], mask)]
    pairs = []
    for image in images:
        candidate = mask_path_for(image)
        pairs.append((image, candidate if candidate.is_file() else None))
    return pairs


def cmd_segment(config: Config, images: list[Path], mask: Path | None, out: Path | None) -> int:
    """Segment image files with one loaded model; print where each result went."""
    from common.errors import BadInput
    from common.names import image_stem
    from worker.image.pipeline import segment_file
    from worker.image.segmenter import Segmenter
    from worker.models.sam import SamModel

    if mask is not None and len(images) != 1:
        print(
            "segd segment: --mask goes with a single image; with several, put <stem>.mask.png beside each",
            file=sys.stderr,
        )
        return EXIT_FAILED_INPUTS
    out_root = out if out is not None else config.paths.outbox
    pairs = _collect_inputs(images, mask)
    segmenter = Segmenter(SamModel.load(config), config)
    if segmenter.model.info.random_weights:
        print(
            "segd: using RANDOM weights (model.checkpoint = random): results show the plumbing, not real segments",
            file=sys.stderr,
        )

    failures, seen = 0, dict[str, Path]()
    for image, region in pairs:
        stem = image_stem(image)
        try:
            if stem in seen:
                raise BadInput(
                    image, f"has the same name as {seen[stem]}; both would write {out_root / stem}"
                )
            seen[stem] = image
            folder = segment_file(segmenter, image, region, out_root)
        except SegdError as exc:
            failures += 1
            print(f"FAILED {exc}", file=sys.stderr)
            continue
        except Exception as exc:  # a bug, not a bad input: say so, keep going with the others
            failures += 1
            print(f"FAILED {image}: internal error {type(exc).__name__}: {exc}", file=sys.stderr)
            log.debug("traceback for %s:\n%s", image, traceback.format_exc())
            continue
        print(folder)
    return EXIT_FAILED_INPUTS if failures else EXIT_OK


def cmd_models_fetch(config: Config, size: str, version: str | None, base_url: str | None) -> int:
    """Download an official checkpoint into <paths.models>/base/."""
    from worker.models.checkpoints import fetch

    version = version or config.model.version
    expected = (
        config.model.checkpoint_sha256
        if (version, size) == (config.model.version, config.model.size)
        else None
    )
    base_url = base_url or config.model.download_url
    path = fetch(version, size, config.paths.models, base_url=base_url, expected_sha256=expected)
    print(path)
    return EXIT_OK


def cmd_config(config: Config) -> int:
    """Print the effective configuration (file + environment) as YAML."""
    import yaml

    print(f"# from {config.source}")
    print(
        yaml.safe_dump(config.model_dump(mode="json", exclude={"source"}), sort_keys=False), end=""
    )
    return EXIT_OK


def cmd_status(config: Config, as_json: bool) -> int:
    """Print the service's state."""
    import json

    from segd import status

    data = status.collect(config)
    print(json.dumps(data, indent=2) if as_json else status.render(data))
    return EXIT_OK


def cmd_systemd_install(args: argparse.Namespace) -> int:
    """Write the systemd units for this installation; print the systemctl lines to run."""
    from segd import systemd as units

    config_file = units.config_file_for(args.config)
    # The units see the config file only, not this shell's SEGD_* variables.
    config = load_config(config_file, environ={})
    plan = units.plan(
        config,
        config_file,
        user_mode=args.user,
        prefix=args.prefix,
        etc_dir=args.etc,
        gpus=units.parse_gpus(args.gpus),
        service_user=args.service_user,
        memory_max=args.memory_max,
    )
    units.write(plan)
    for path in plan.files:
        print(f"wrote {path}")
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print("\nnow run" + ("" if args.user else " (as root)") + ":")
    for command in plan.commands:
        print(f"  {command}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="config file (default: $SEGD_CONFIG, else ./config.yaml if present); "
        "SEGD_<SECTION>__<KEY> variables override its keys",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", help="log more (tracebacks for internal errors)"
    )

    parser = argparse.ArgumentParser(
        prog="segd",
        description="Hot-folder segmentation with SAM2: images in, index and colour segmentation maps out.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"segd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    segment = commands.add_parser(
        "segment",
        parents=[common],
        help="segment image files now, without the service",
        description="Segment images with the configured model (the worker's exact code path, without Redis). "
        "Each result goes to DIR/<stem>/; a line per failure names the file and the reason.",
    )
    segment.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="jpg, png, tif, bmp or webp files"
    )
    segment.add_argument(
        "--mask",
        type=Path,
        metavar="MASK",
        help="region mask for a single IMAGE (non-zero = segment here); "
        "with several images, <stem>.mask.png beside each is used when present",
    )
    segment.add_argument(
        "--out", type=Path, metavar="DIR", help="where result folders go (default: paths.outbox)"
    )

    models = commands.add_parser(
        "models",
        parents=[common],
        help="manage model checkpoints",
        description="Manage model checkpoints.",
    )
    models_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    fetch = models_commands.add_parser(
        "fetch",
        parents=[common],
        help="download an official SAM2/SAM2.1 checkpoint",
        description="Download an official checkpoint into <paths.models>/base/ with a progress bar; an "
        "interrupted download resumes. Offline, it prints where to place the file by hand.",
    )
    fetch.add_argument("size", choices=["tiny", "small", "base_plus", "large"])
    fetch.add_argument(
        "--version", dest="model_version", choices=["sam2", "sam2.1"], help="default: model.version"
    )
    fetch.add_argument("--base-url", metavar="URL", help="a mirror of Meta's download folder")

    commands.add_parser(
        "config",
        parents=[common],
        help="print the effective configuration",
        description="Print the configuration after the file and SEGD_* overrides are applied.",
    )
    commands.add_parser(
        "up",
        parents=[common],
        help="run the whole service here: private Redis, watcher and a worker",
        description="Start a private redis-server (unix socket, append-only; skipped when redis.url "
        "is set), the inbox watcher and one worker, logging to the terminal. Ctrl-C stops everything "
        "cleanly. On the first start it fetches the default checkpoint.",
    )
    commands.add_parser(
        "watch",
        parents=[common],
        help="run the inbox watcher alone",
        description="Watch paths.inbox, claim complete files into paths.state/claimed/ and enqueue "
        "their jobs.",
    )
    worker_cmd = commands.add_parser(
        "worker",
        parents=[common],
        help="run one worker alone (one per GPU)",
        description="Load the model once and serve the segment and video queues; SIGTERM finishes the current "
        "job, then exits.",
    )
    worker_cmd.add_argument(
        "--name", help="worker name (default: segd-<host>-<CUDA_VISIBLE_DEVICES or cpu>)"
    )
    worker_cmd.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    status_cmd = commands.add_parser(
        "status",
        parents=[common],
        help="show queues, workers, throughput and recent failures",
        description="Show queue depths, workers (host, device, model version, current job), inputs "
        "done and failed in the last hour, and the latest failures with their reasons.",
    )
    status_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    train.add_commands(commands, models_commands, common)
    web_cli.add_commands(commands, common)
    status_cmd.add_argument(
        "--check",
        action="store_true",
        help="health check for monitoring: exit 1 when Redis is unreachable, a worker is missing "
        "or a queue is stuck (one line per problem), 0 when healthy",
    )
    retry_command.add_command(commands, common)
    commands.add_parser(
        "metrics",
        parents=[common],
        help="serve Prometheus metrics (metrics.host:metrics.port, localhost by default)",
        description="Serve Prometheus metrics read from Redis at each scrape: jobs done and failed "
        "by type, job durations, queue depths, model versions and GPU memory of every worker.",
    )
    systemd_cmd = commands.add_parser(
        "systemd",
        parents=[common],
        help="systemd units for this installation",
        description="Manage segd's systemd units.",
    )
    systemd_actions = systemd_cmd.add_subparsers(
        dest="systemd_command", metavar="ACTION", required=True
    )
    install = systemd_actions.add_parser(
        "install",
        parents=[common],
        help="write the units with this installation's paths and print the systemctl lines",
        description="Render segd-watcher, segd-worker@ (one per GPU), segd-trainer, segd-metrics, "
        "segd-web, segd-redis (unless redis.url is set) and segd.target with this installation's segd, config "
        "file and data folders, then print the commands that enable them.",
    )
    install.add_argument(
        "--user",
        action="store_true",
        help="user units (~/.config/systemd/user) instead of system ones",
    )
    install.add_argument(
        "--prefix",
        type=Path,
        metavar="DIR",
        help="write the units into DIR (default: /etc/systemd/system, or ~/.config/systemd/user)",
    )
    install.add_argument(
        "--etc",
        type=Path,
        metavar="DIR",
        help="where segd.env and redis.conf go (default: /etc/segd, or ~/.config/segd)",
    )
    install.add_argument(
        "--gpus",
        metavar="LIST",
        help="GPU indices, one worker each (e.g. 0,1), or cpu (default: this host's NVIDIA GPUs, else cpu)",
    )
    install.add_argument(
        "--service-user", default="segd", metavar="NAME", help="the user the services run as"
    )
    install.add_argument(
        "--memory-max",
        default="25%",
        metavar="SIZE",
        help="memory cap per worker (systemd MemoryMax=: 16G, 25%%, ...)",
    )
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command, map segd's errors to exit codes."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
        for module in (train, web_cli):
            code = module.dispatch(config, args)
            if code is not None:
                return code
        if args.command == "segment":
            return cmd_segment(config, args.images, args.mask, args.out)
        if args.command == "models" and args.models_command == "fetch":
            return cmd_models_fetch(config, args.size, args.model_version, args.base_url)
        if args.command == "config":
            return cmd_config(config)
        if args.command == "status" and args.check:
            from segd.health import check

            return check(config)
        if args.command == "status":
            return cmd_status(config, args.json)
        if args.command == "retry":
            return retry_command.cmd(config, args.targets, args.all)
        if args.command == "metrics":
            from segd.metrics import serve

            return serve(config)
        if args.command == "systemd" and args.systemd_command == "install":
            return cmd_systemd_install(args)
        if args.command == "watch":
            from watcher.service import run as run_watcher

            return run_watcher(config)
        if args.command == "worker":
            from worker.service.segment_worker import run as run_worker

            return run_worker(config, name=args.name, burst=args.burst)
        if args.command == "up":
            from segd.up import up

            return up(config, str(args.config) if args.config else None)
    except SegdError as exc:
        print(f"segd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command!r}")


def main() -> None:
    # Before anything imports torch: its OpenMP threads otherwise spin after each parallel
    # region, and on a small CPU host that slows the numpy and Python work between torch calls
    # (the sampler, upsampling, writing) 3-30x (docs/benchmarks.md). A value set outside wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(run())
