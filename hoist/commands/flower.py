"""``hoist flower``: Flower for the upload fleet, with authentication and readable tasks."""

from __future__ import annotations

from typing import Any

from hoist.workers import flower


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
    parser.set_defaults(func=flower.run_flower)
