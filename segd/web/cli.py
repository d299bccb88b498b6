"""`segd web`: the argument wiring (kept beside the page's code so segd/cli.py stays small)."""

from __future__ import annotations

import argparse

from common.config import Config


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    commands.add_parser(
        "web",
        parents=[common],
        help="serve the web page (web.host:web.port, http://127.0.0.1:9471/ by default)",
        description="Serve a local web page: live status, the latest results as pictures, "
        "failures with a Retry button, model versions with their validation curves, and files "
        "dropped onto the page go into the inbox. Listens on 127.0.0.1 unless web.host says "
        "otherwise; any other address needs web.token.",
    )


def dispatch(config: Config, args: argparse.Namespace) -> int | None:
    """Run `segd web`; None for other commands."""
    if args.command != "web":
        return None
    from segd.web.server import serve

    return serve(config)
