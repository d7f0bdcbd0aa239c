"""``hoist flower``: Flower for the upload fleet, with authentication and readable tasks."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hoist.commands.console import console
from hoist.settings import WorkerSettings
from hoist.workers import flower
from hoist.workers.envfile import apply_env_file


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "flower",
        help="run Flower, the web monitor of the upload fleet",
        description="Flower for the hoist app: tasks show run, rank, artifact and size, never "
        "credentials. Credentials come from HOIST_FLOWER_USER/HOIST_FLOWER_PASSWORD (or "
        "<home>/env) and reach Flower through its environment, not its command line. Beyond "
        "loopback, authentication is required. Other Flower options can be set as FLOWER_* "
        "variables (FLOWER_CERTFILE, FLOWER_BROKER_API, …).",
        epilog="example: HOIST_FLOWER_USER=ops HOIST_FLOWER_PASSWORD=… "
        "hoist flower --address 0.0.0.0 --port 5555",
    )
    flower.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve Flower's settings here, at the edge, and run it until it is stopped."""
    apply_env_file(args.home)  # the local cluster's broker and Flower credentials, if any
    environ = dict(os.environ)
    if args.broker_url:
        environ["HOIST_BROKER_URL"] = args.broker_url
    settings = WorkerSettings.from_environment(environ)
    return flower.run_flower(
        settings,
        args.address,
        args.port,
        basic_auth=args.basic_auth,
        url_prefix=args.url_prefix,
        note=lambda text: console.print(text, highlight=False),
    )
