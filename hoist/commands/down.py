"""``hoist down``: stop the embedded default cluster that ``hoist up`` started."""

from __future__ import annotations

import argparse
from typing import Any

from hoist.commands.console import console
from hoist.workers.cluster import stop_cluster


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "down",
        help="stop the cluster that `hoist up` started",
        description="Stop the workers (they finish running uploads, for up to 30 s), then "
        "Flower, then Redis (its data is kept in <home>/redis, and <home>/env keeps the same "
        "port and passwords for the next `hoist up`).",
        epilog="example: hoist --home /scratch/hoist down",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stopped = stop_cluster(args.home)
    if not stopped:
        console.print(f"no cluster is running in {args.home}")
        return 0
    console.print(f"[green]stopped[/] {', '.join(stopped)} (data kept in {args.home})")
    return 0
