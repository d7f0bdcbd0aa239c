"""``hoist up``: start the embedded default cluster (Redis, workers, Flower) on this machine."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

from rich.table import Table

from hoist.commands.console import console, out
from hoist.protocol.urls import mask_url
from hoist.workers.cluster import DEFAULT_CONCURRENCY, ClusterInfo, LocalCluster
from hoist.workers.envfile import source_line
from hoist.workers.flower import DEFAULT_ADDRESS, DEFAULT_PORT


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "up",
        help="start Redis, upload workers and Flower on this machine",
        description="Start a private Redis (loopback only, password, persistence), upload "
        "workers and Flower (basic auth) under --home, and write <home>/env for every other "
        "command and for training scripts. Runs in the foreground until Ctrl-C unless "
        "--detach. A cluster already running from the same home is reused, with a note when "
        "your AWS variables (credentials, profile, region, endpoint) differ from those its "
        "workers started with; --restart stops it and starts it again with your environment.",
        epilog="example: hoist up --detach --workers 4 && set -a; . ./.hoist/env; set +a",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=os.cpu_count() or 2,
        help="worker processes (default: number of cores)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="C",
        default=DEFAULT_CONCURRENCY,
        help=f"uploads each worker runs at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="start in the background and return; stop with `hoist down`",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="stop the cluster running from this home first (uploads in flight finish), then "
        "start it with this shell's environment and the given size",
    )
    parser.add_argument(
        "--flower-port",
        type=int,
        metavar="PORT",
        default=DEFAULT_PORT,
        help=f"Flower's port (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--flower-address",
        metavar="ADDRESS",
        default=DEFAULT_ADDRESS,
        help=f"Flower's address (default {DEFAULT_ADDRESS}; Flower always requires a login)",
    )
    parser.add_argument(
        "--allow-store",
        action="append",
        default=[],
        metavar="URI",
        help="another store the workers may upload to besides the embedded one (repeatable; "
        "a store URI as `hoist worker --allow-store` takes it); kept in <home>/env",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cluster = LocalCluster(
        args.home,
        workers=args.workers,
        concurrency=args.concurrency,
        flower_port=args.flower_port,
        flower_address=args.flower_address,
        allow_stores=tuple(args.allow_store),
    )
    if args.detach:
        info, reused = cluster.start(restart=args.restart)
        report(cluster, info, reused, detached=True)
        return 0
    return run_foreground(cluster, restart=args.restart)


def run_foreground(cluster: LocalCluster, restart: bool = False) -> int:
    """Start, print the summary, and stop everything on SIGINT/SIGTERM."""
    stop, hurry, started = threading.Event(), threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        # The first signal stops in order; a second one cuts the workers' grace short.
        if stop.is_set():
            hurry.set()
            return
        stop.set()
        if not started.is_set():
            raise KeyboardInterrupt  # still starting: `start` tears down what it began

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        info, reused = cluster.start(restart=restart)
        started.set()
        report(cluster, info, reused, detached=reused)
        if reused:
            return 0  # someone else's `hoist up` owns it
        if cluster.serve(stop, lambda line: console.print(f"[yellow]{line}[/]", highlight=False)):
            console.print("stopping: workers finish their uploads (Ctrl-C again to hurry)…")
        cluster.stop(hurry)
        console.print("[green]stopped[/]")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(cluster: LocalCluster, info: ClusterInfo, reused: bool, detached: bool) -> None:
    """Print the notes and the summary table."""
    for note in cluster.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    title = "hoist cluster: already running, reused" if reused else "hoist cluster: running"
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in summary_rows(info, detached):
        table.add_row(name, value)
    out.print(table, highlight=False)


def summary_rows(info: ClusterInfo, detached: bool) -> list[tuple[str, str]]:
    """The rows of the summary ``hoist up`` prints (no secret in them).

    Example:
        >>> info = ClusterInfo(".hoist", "redis://:pw@127.0.0.1:6390/0", "http://127.0.0.1:5555",
        ...                    "hoist", ".hoist/staging", "file:///srv/store", 2, 2)
        >>> dict(summary_rows(info, detached=True))["broker"]
        'redis://:****@127.0.0.1:6390/0  (full URL in .hoist/env)'
    """
    home = info.home
    rows = [
        ("broker", f"{mask_url(info.broker_url)}  (full URL in {info.env_file})"),
        ("Flower", info.flower_url),
        (
            "Flower login",
            f"user {info.flower_user}, password in {info.env_file} (HOIST_FLOWER_PASSWORD)",
        ),
        ("staging", info.staging_dir),
        ("store", info.store_uri),
        ("workers", f"{info.workers} × concurrency {info.concurrency}"),
        ("logs", os.path.join(home, "logs")),
        ("use from a shell", source_line(home)),
    ]
    home_option = "" if home == ".hoist" else f" --home {home}"
    stop = f"hoist{home_option} down" if detached else "Ctrl-C here, or `hoist down`"
    rows.append(("stop", stop))
    return rows
