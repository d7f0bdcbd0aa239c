"""``hoist worker``: a Celery worker with defaults fit for long uploads.

Options become ``HOIST_*`` environment variables before the Celery app is
imported, so that every pool process reads the same settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from hoist.protocol.messages import NODE_QUEUE_ENV, POINTER_QUEUE, UPLOAD_QUEUE, node_queue
from hoist.stores.allowed import ALLOWED_STORES_ENV

log = logging.getLogger("hoist.worker")

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
        help=f"queues to consume (default: {UPLOAD_QUEUE},{POINTER_QUEUE}; run pointer-only "
        f"workers with -Q {POINTER_QUEUE})",
    )
    parser.add_argument(
        "--node-queue",
        metavar="NAME",
        default=os.environ.get(NODE_QUEUE_ENV) or None,
        help="also consume this node's upload queue, which ranks staging to a node-local "
        f"folder send to (logger node_queue= or {NODE_QUEUE_ENV}; default: {NODE_QUEUE_ENV}). "
        f"Without -Q, such a worker consumes its node queue and {POINTER_QUEUE} only, not the "
        f"shared {UPLOAD_QUEUE}, whose files it may not be able to read",
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
    parser.add_argument(
        "--allow-store",
        action="append",
        metavar="URI",
        help="a store this fleet may upload to, as a store URI (s3://BUCKET/PREFIX?endpoint_url="
        "URL, sftp://USER@HOST/DIR, file:///DIR, libcloud://PROVIDER/CONTAINER?host=H); "
        "repeatable; added to HOIST_ALLOWED_STORES",
    )
    parser.add_argument(
        "--allow-any-store",
        action="store_true",
        help="upload wherever a signed message says (no allow-list); for trusted ranks only",
    )
    parser.add_argument(
        "--insecure-unsigned",
        action="store_true",
        help="accept unsigned messages when the worker has no HOIST_FLEET_KEY; only on a "
        "broker nobody else can write to",
    )
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("-n", "--hostname", default=f"hoist@{socket.gethostname()}")
    parser.add_argument("-l", "--loglevel", default="INFO")


def worker_queues(queues: str | None, node: str | None) -> str:
    """The queues a worker consumes, comma-separated.

    Parameters:
        queues: ``-Q`` as given, or None for the default.
        node: ``--node-queue`` as given, or None.

    Example:
        >>> worker_queues(None, "gpu-017")
        'hoist.uploads.node.gpu-017,hoist.symlinks'
        >>> worker_queues("hoist.uploads,hoist.symlinks", "gpu-017")
        'hoist.uploads,hoist.symlinks,hoist.uploads.node.gpu-017'
    """
    if not node:
        return queues or f"{UPLOAD_QUEUE},{POINTER_QUEUE}"
    # A worker for node-local staging reads only its node's folder: by default it
    # takes no shared uploads (their files may be elsewhere), only its node's and
    # the pointers, which need no file.
    chosen = queues.split(",") if queues else [POINTER_QUEUE]
    own = node_queue(node)
    if queues is None:
        return ",".join([own, *chosen])
    return ",".join([*chosen, own] if own not in chosen else chosen)


def run_worker(args: argparse.Namespace) -> int:
    queues = worker_queues(args.queues, args.node_queue)
    for option, variable in OPTION_ENVIRONMENT.items():
        value = getattr(args, option, None)
        if value is not None:
            os.environ[variable] = str(value)
    if args.allow_store:
        os.environ[ALLOWED_STORES_ENV] = " ".join(
            [*os.environ.get(ALLOWED_STORES_ENV, "").split(), *args.allow_store]
        )
    for flag, variable in (
        (args.allow_any_store, "HOIST_ALLOW_ANY_STORE"),
        (args.insecure_unsigned, "HOIST_INSECURE_UNSIGNED"),
    ):
        if flag:
            os.environ[variable] = "1"
    from hoist.tasks.app import app, settings  # reads the environment set above

    refusal = settings.startup_refusal()
    if refusal is not None:
        print(f"hoist worker: {refusal}", file=sys.stderr)
        return 2
    if settings.keys is None:
        log.warning(
            "hoist worker: --insecure-unsigned: acting on UNSIGNED messages; anyone who can "
            "write to the broker can make this worker upload, read staged files and write stores"
        )
    if settings.allowed.any_store:
        log.warning("hoist worker: --allow-any-store: uploading to any store a message names")
    from hoist.protocol.broker import transport_for

    # kombu's Redis transport with a repair: without it a worker exits when
    # Redis restarts under an upload in flight (see hoist.protocol.broker). Only
    # consumers need it; Flower names its broker page by the transport.
    app.conf.broker_transport = transport_for(app.conf.broker_url)
    app.worker_main(
        [
            "worker",
            f"--concurrency={args.concurrency}",
            f"--queues={queues}",
            f"--pool={args.pool}",
            f"--hostname={args.hostname}",
            f"--loglevel={args.loglevel}",
            "--without-mingle",  # nothing to learn from peers; it only slows start-up
            "--without-gossip",
        ]
    )
    return 0
