"""``hoist worker``: a Celery worker with defaults fit for long uploads.

Options become ``HOIST_*`` environment variables before the Celery app is
imported, so that every pool process reads the same settings.
"""

from __future__ import annotations

import argparse
import os
import socket

from hoist.tasks.messages import SYMLINK_QUEUE, UPLOAD_QUEUE

OPTION_ENVIRONMENT = {
    "broker_url": "HOIST_BROKER_URL",
    "state_url": "HOIST_STATE_URL",
    "staging_dir": "HOIST_STAGING_DIR",
    "store_limit": "HOIST_STORE_LIMIT",
    "max_retries": "HOIST_MAX_RETRIES",
    "visibility_timeout": "HOIST_VISIBILITY_TIMEOUT",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker-url", help="Celery broker (default: HOIST_BROKER_URL)")
    parser.add_argument("--state-url", help="Redis for artifact records (default: the broker)")
    parser.add_argument("--staging-dir", help="the staging root; nothing outside it is read")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=os.cpu_count() or 2,
        help="uploads this worker runs at once (default: number of cores)",
    )
    parser.add_argument(
        "-Q",
        "--queues",
        default=f"{UPLOAD_QUEUE},{SYMLINK_QUEUE}",
        help=f"queues to consume (default: both; run pointer-only workers with -Q {SYMLINK_QUEUE})",
    )
    parser.add_argument(
        "--store-limit",
        type=int,
        help="uploads to one store at once across the fleet (default: no limit)",
    )
    parser.add_argument(
        "--max-retries", type=int, help="attempts after transient errors (default 8)"
    )
    parser.add_argument(
        "--visibility-timeout",
        type=int,
        help="seconds before the broker redelivers an unacknowledged message",
    )
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("-n", "--hostname", default=f"hoist@{socket.gethostname()}")
    parser.add_argument("-l", "--loglevel", default="INFO")


def run_worker(args: argparse.Namespace) -> int:
    for option, variable in OPTION_ENVIRONMENT.items():
        value = getattr(args, option, None)
        if value is not None:
            os.environ[variable] = str(value)
    from hoist.tasks.app import app  # reads the environment set above
    from hoist.tasks.broker import transport_for

    # kombu's Redis transport with a repair: without it a worker exits when
    # Redis restarts under an upload in flight (see hoist.tasks.broker). Only
    # consumers need it; Flower names its broker page by the transport.
    app.conf.broker_transport = transport_for(app.conf.broker_url)
    app.worker_main(
        [
            "worker",
            f"--concurrency={args.concurrency}",
            f"--queues={args.queues}",
            f"--pool={args.pool}",
            f"--hostname={args.hostname}",
            f"--loglevel={args.loglevel}",
            "--without-mingle",  # nothing to learn from peers; it only slows start-up
            "--without-gossip",
        ]
    )
    return 0
