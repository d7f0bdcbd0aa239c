"""``hoist worker``: run a worker of the upload fleet."""

from __future__ import annotations

from typing import Any

from hoist.workers import worker


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "worker",
        help="run a worker of the upload fleet",
        description="A Celery worker with defaults fit for long uploads: late acks, requeue on "
        "worker loss, prefetch 1, fleet-wide concurrency limits.",
        epilog="example: hoist worker --broker-url redis://:PASSWORD@redis:6379/0 "
        "--staging-dir /shared/staging -c 8 --store-limit 32",
    )
    worker.add_arguments(parser)
    parser.set_defaults(func=worker.run_worker)
