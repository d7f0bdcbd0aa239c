"""``hoist flower``: Flower for the upload fleet, with authentication and readable tasks."""

from __future__ import annotations

import argparse
import os
from typing import Any

from hoist.commands.console import console
from hoist.settings import CommandSettings, WorkerSettings
from hoist.workers import flower
from hoist.workers.envfile import apply_env_file


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "flower",
        help="run Flower, the web monitor of the upload fleet",
        description="Flower for the hoist app: tasks show artifact, size, run and rank, never "
        "credentials, and what became of each: PROGRESS (bytes so far), FAILURE (its error), "
        "RETRY (waiting or retrying, and when it is sent again), SUPERSEDED. Credentials "
        "come from HOIST_FLOWER_USER/HOIST_FLOWER_PASSWORD (or "
        "<home>/env) and reach Flower through its environment, not its command line. Beyond "
        "loopback, authentication is required. Other Flower options can be set as FLOWER_* "
        "variables (FLOWER_CERTFILE, FLOWER_BROKER_API, …).",
        epilog="example: HOIST_FLOWER_USER=ops HOIST_FLOWER_PASSWORD=… "
        "hoist flower --address 0.0.0.0 --port 5555",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hoist flower``."""
    parser.add_argument("--broker-url", help="Celery broker (default: HOIST_BROKER_URL)")
    parser.add_argument(
        "--address",
        default=flower.DEFAULT_ADDRESS,
        help=f"address to listen on (default {flower.DEFAULT_ADDRESS}; anything else needs auth)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=flower.DEFAULT_PORT,
        help=f"port (default {flower.DEFAULT_PORT})",
    )
    parser.add_argument(
        "--basic-auth",
        metavar="USER:PASS",
        help=f"require these credentials (default: {flower.USER_ENV}/{flower.PASSWORD_ENV}; "
        "an option is visible in `ps`, the variables are not)",
    )
    parser.add_argument(
        "--url-prefix", help="serve under this path, behind a reverse proxy (e.g. flower)"
    )


def run(args: argparse.Namespace) -> int:
    """Resolve Flower's settings here, at the edge, and run it until it is stopped."""
    apply_env_file(args.home)  # the local cluster's broker and Flower credentials, if any
    environ = dict(os.environ)
    if args.broker_url:
        environ["HOIST_BROKER_URL"] = args.broker_url
    settings = WorkerSettings.from_environment(environ)
    command = CommandSettings.from_environment(environ)
    return flower.run_flower(
        settings,
        args.address,
        args.port,
        basic_auth=args.basic_auth,
        login=(command.flower_user, command.flower_password),
        url_prefix=args.url_prefix,
        note=lambda text: console.print(text, highlight=False),
    )
