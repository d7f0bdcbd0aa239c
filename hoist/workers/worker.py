"""``hoist worker``: a Celery worker with defaults fit for long uploads.

The worker's settings are resolved once, here: the environment's
(:meth:`~hoist.settings.WorkerSettings.from_environment`) with the command
line's options over them (:func:`worker_settings`). The app is built from
them (:func:`~hoist.tasks.app.worker_app`) before Celery's pool forks, so
every pool process runs with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
from typing import Any

from hoist.protocol.broker import transport_for
from hoist.protocol.messages import NODE_QUEUE_ENV, POINTER_QUEUE, UPLOAD_QUEUE, node_queue
from hoist.settings import WorkerSettings
from hoist.stores.allowed import AllowedStores
from hoist.tasks.app import worker_app

log = logging.getLogger("hoist.worker")

OPTION_SETTINGS = {
    "broker_url": "broker_url",
    "state_url": "state_url",
    "staging_dir": "staging_root",
    "store_limit": "store_limit",
    "max_retries": "max_retries",
    "visibility_timeout": "visibility_timeout",
}
"""The settings field each ``hoist worker`` option sets, when given."""


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
        default=None,  # HOIST_NODE_QUEUE, read at the worker's start
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


def worker_settings(base: WorkerSettings, args: argparse.Namespace) -> WorkerSettings:
    """``base`` (the environment's settings) with the options given on the command line.

    An option given wins over its variable; ``--allow-store`` adds to
    ``HOIST_ALLOWED_STORES``; ``--broker-url`` alone moves the records too,
    unless ``HOIST_STATE_URL`` names their own Redis.

    Example:
        >>> args = argparse.Namespace(broker_url="redis://r:6379/1", store_limit=4)
        >>> chosen = worker_settings(WorkerSettings(), args)
        >>> chosen.state_url, chosen.store_limit, chosen.max_retries
        ('redis://r:6379/1', 4, 8)
    """
    changes: dict[str, Any] = {
        field: value
        for option, field in OPTION_SETTINGS.items()
        if (value := getattr(args, option, None)) is not None
    }
    moved = "broker_url" in changes and getattr(args, "state_url", None) is None
    if moved and not base.state_url_apart:
        changes["state_url"] = changes["broker_url"]
    if "staging_root" in changes:
        changes["staging_root"] = changes["staging_root"] or None
    allow = list(getattr(args, "allow_store", None) or [])
    any_store = bool(getattr(args, "allow_any_store", False))
    if allow or any_store:
        allowed = base.allowed
        changes["allowed"] = AllowedStores.parse(
            [*allowed.uris, *allow], allowed.any_store or any_store
        )
    if getattr(args, "insecure_unsigned", False):
        changes["insecure_unsigned"] = True
    return dataclasses.replace(base, **changes)


def run_worker(args: argparse.Namespace) -> int:
    """Resolve the worker's settings once, build the app from them, run Celery's worker."""
    settings = worker_settings(WorkerSettings.from_environment(), args)
    node = args.node_queue if args.node_queue is not None else settings.node_queue
    queues = worker_queues(args.queues, node)
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
    # Built before Celery's pool forks: every pool process inherits this app and settings.
    app = worker_app(settings)
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
