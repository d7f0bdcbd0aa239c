"""How a message reaches the broker: the Celery configuration both sides share, and sending.

Ranks send through :func:`sender` and :func:`send`; they never import the
workers' Celery app, its task bodies or its signal handlers.
"""

from __future__ import annotations

import os
import socket
import ssl
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery

from hoist.errors import ConfigurationError
from hoist.protocol.broker import transport_for
from hoist.protocol.messages import (
    COMMIT_TASK,
    MAX_BATCH,
    POINTER_QUEUE,
    POINTER_TASK,
    QUEUES,
    UPLOAD_BATCH_TASK,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
    Message,
    UploadRequest,
)
from hoist.protocol.redis_url import kombu_url, transport_options
from hoist.settings import SentinelSettings

_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")

# A broker cut off by the network (not closed: a partition, a master Sentinel
# replaced) sends nothing, and a worker waiting for its BRPOP reply waited on
# (measured: over 60 s, until TCP gave up). Keepalive probes and a bound on
# unacknowledged data make the kernel fail such a connection within about
# 11 s, and kombu reconnects (through Sentinel, to the new master). Linux's
# options; elsewhere the system's keepalive only.
_TCP_OPTIONS = {
    name: value
    for name, value in (
        ("TCP_KEEPIDLE", 5),
        ("TCP_KEEPINTVL", 2),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 10_000),
    )
    if hasattr(socket, name)
}
_KEEPALIVE: dict[str, Any] = {
    "socket_keepalive": True,
    "socket_keepalive_options": {getattr(socket, name): v for name, v in _TCP_OPTIONS.items()},
}


def redis_tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL, as Celery's ``broker_use_ssl`` takes them
    (and of a ``sentinel://`` URL that has ``ssl_*`` parameters: TLS to the master).

    redis-py (the records), Celery's result backend and kombu (the broker) all
    read ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile`` and
    ``ssl_keyfile`` from the URL's query string, but they differ when none is
    given: redis-py checks the server's certificate, kombu connects **without
    checking it** (``CERT_NONE``, a warning in the log; measured with kombu
    5.7). hoist hands the same options to the broker and the result backend,
    defaulting like redis-py to ``ssl_cert_reqs=required`` (the system CAs, or
    ``ssl_ca_certs``), so a plain ``rediss://host:6380/0`` is checked everywhere.

    Parameters:
        url: the broker URL.

    Returns:
        None for a URL that is not ``rediss://``.

    Raises:
        ConfigurationError: an unknown ``ssl_cert_reqs``, or a certificate or
            key file that does not exist.

    Example:
        >>> redis_tls_options("rediss://redis.lan:6380/0?ssl_cert_reqs=optional")
        {'ssl_cert_reqs': <VerifyMode.CERT_OPTIONAL: 1>}
        >>> redis_tls_options("rediss://redis.lan:6380/0?ssl_ca_certs=/no/ca.pem")
        Traceback (most recent call last):
        ...
        hoist.errors.ConfigurationError: ssl_ca_certs='/no/ca.pem' in the broker URL is not...
        >>> redis_tls_options("redis://redis.lan:6379/0") is None
        True
    """
    parts = urlsplit(url)  # of a sentinel:// list, the query of its last part
    tls_sentinel = parts.scheme == "sentinel" and "ssl_" in parts.query
    if parts.scheme != "rediss" and not tls_sentinel:
        return None
    query = dict(parse_qsl(parts.query))
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs.lower() not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs={reqs!r} in the broker URL is not one of required, optional, none"
        )
    options: dict[str, Any] = {"ssl_cert_reqs": _CERT_REQS[reqs.lower()]}
    for name in _TLS_FILES:
        if name in query:
            if not os.path.isfile(query[name]):
                raise ConfigurationError(
                    f"{name}={query[name]!r} in the broker URL is not a file; give the path "
                    "of a PEM file readable on this machine"
                )
            options[name] = query[name]
    return options


def celery_config(
    broker_url: str, visibility_timeout: int = 7200, sentinel: SentinelSettings | None = None
) -> dict[str, Any]:
    """Celery settings shared by ranks (sending) and workers (running).

    A ``sentinel://`` URL (:mod:`hoist.protocol.redis_url`) is handed to kombu
    as it reads one, with the master's name and the sentinels' password
    (``sentinel``) as transport options of the broker and the result backend.

    Raises:
        ConfigurationError: ``broker_url`` is a ``sentinel://`` URL hoist cannot
            use (:func:`~hoist.protocol.redis_url.parse_sentinel_url`).
    """
    transport: dict[str, Any] = {
        "visibility_timeout": visibility_timeout,
        # kombu 5.7 looks for overdue unacknowledged messages only every
        # interval x throttle = 100 s, so a short visibility timeout would not
        # mean what it says. One cheap scan (a ZRANGE under a lock) at least
        # every 10 s, and every half visibility timeout when that is shorter.
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 2)),
        "unacked_restore_throttle": 1,
        **_KEEPALIVE,
        **transport_options(broker_url, sentinel),
    }
    tls = redis_tls_options(broker_url)
    broker_url = kombu_url(broker_url, sentinel)
    return {
        # None for redis://; for rediss:// the URL's own TLS parameters (see above).
        "broker_use_ssl": tls,
        "redis_backend_use_ssl": tls,
        "broker_url": broker_url,
        "result_backend": broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        # JSON only: a pickle on a shared broker is a remote code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": 24 * 3600,
        # Outcomes live in the artifact records; Flower reads results from
        # events. Storing them again would cost a write and ~600 bytes each.
        "task_ignore_result": True,
        # A message is acknowledged after the task, and handed back if the
        # worker dies; the artifact record makes the second run harmless.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # An upload in flight goes on when the broker connection drops (a
        # failover, a restart): its record, not the message, says who owns it,
        # and it settles through the records' client once Redis answers again.
        # Cancelled instead, it was started again from scratch once its lease
        # ran out (measured: 30 s after a Sentinel failover, default lease).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_routes": {
            UPLOAD_TASK: {"queue": UPLOAD_QUEUE},
            UPLOAD_BATCH_TASK: {"queue": UPLOAD_QUEUE},
            POINTER_TASK: {"queue": POINTER_QUEUE},
            COMMIT_TASK: {"queue": POINTER_QUEUE},
        },
        "task_default_queue": UPLOAD_QUEUE,
        # Flower needs events to show tasks as they run. Not the "sent" event:
        # it is a second publish in the rank's file_artifact (measured: half
        # of the send's 0.54 ms), and `hoist status` shows queued artifacts.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_track_started": True,
        "worker_hijack_root_logger": False,
    }


_apps: dict[tuple[str, SentinelSettings], Celery] = {}


def sender(broker_url: str, sentinel: SentinelSettings | None = None) -> Celery:
    """A Celery app for sending hoist tasks to ``broker_url`` (one per URL and
    ``sentinel`` per process)."""
    key = (broker_url, sentinel or SentinelSettings())
    if key not in _apps:
        sender = Celery("hoist", set_as_current=False)
        sender.conf.update(celery_config(broker_url, sentinel=sentinel))
        # Ranks never read task results; with a result backend set, every send
        # would also SUBSCRIBE to the task's result channel (measured: +0.7 ms).
        sender.conf.result_backend = None
        sender.conf.broker_transport = transport_for(broker_url)
        _apps[key] = sender
    return _apps[key]


def queue_for(task: str, message: Message) -> str:
    """The queue ``message`` goes to: its node queue if it names one, else the task's."""
    return getattr(message, "queue", "") or QUEUES[task]


def send(app: Any, task: str, message: Message, retry_seconds: float = 30.0) -> None:
    """Send ``message`` as ``task``, with its artifact id as the task id.

    The queue is :func:`queue_for` the message, so an upload staged on a node
    goes to that node's queue every time it is sent.

    Flower shows :meth:`Message.summary` as the arguments. If the broker is
    unreachable, kombu retries for about ``retry_seconds`` before raising.
    """
    kwargs = {"message": message.to_json()}
    queue = queue_for(task, message)
    _send_task(app, task, kwargs, message.id, queue, message.summary(), retry_seconds)


def send_batch(app: Any, messages: list[UploadRequest], retry_seconds: float = 30.0) -> None:
    """Send several small uploads of one rank as one :data:`UPLOAD_BATCH_TASK`.

    A task costs a worker about 3 ms of CPU whatever it carries (Celery's
    consumer, the hand-off to a pool process, three events); for a 64 KiB file
    that is more than its upload. Each artifact keeps its own record, claim
    and outcome: a member held back or retried is sent again on its own.
    The task id is :func:`batch_id`, the queue that of the first member
    (a rank's uploads share one).

    Raises:
        ValueError: no messages, or more than :data:`MAX_BATCH`.
    """
    if not 0 < len(messages) <= MAX_BATCH:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH} uploads, not {len(messages)}")
    kwargs = {"messages": [message.to_json() for message in messages]}
    queue = queue_for(UPLOAD_TASK, messages[0])
    summary = batch_summary(messages)
    _send_task(app, UPLOAD_BATCH_TASK, kwargs, batch_id(messages), queue, summary, retry_seconds)


def batch_id(messages: list[UploadRequest]) -> str:
    """The task id of a batch: its first member's id and how many follow.

    Example:
        >>> batch_id([UploadRequest("hoist-r-r0-7", "r", 0, 7, "a", "a", "o", {})] * 3)
        'hoist-r-r0-7+2'
    """
    return f"{messages[0].id}+{len(messages) - 1}"


def batch_summary(messages: list[UploadRequest]) -> dict[str, Any]:
    """What Flower shows as a batch's arguments, shortest first (as :meth:`Message.summary`).

    Up to eight names make the list of artifacts the longest, so the counts
    come before it and the run after.

    Example:
        >>> batch_summary([UploadRequest("i", "r", 0, 7, "a.txt", "o", "k", {}, size=3)] * 2)
        {'files': 2, 'size': 6, 'artifacts': 'a.txt, a.txt', 'run': 'r', 'rank': 0}
    """
    names = [message.artifact_name for message in messages]
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    first = messages[0]
    return {
        "files": len(messages),
        "size": sum(message.size for message in messages),
        "artifacts": shown,
        "run": first.run_name,
        "rank": first.rank,
    }


def _send_task(
    app: Any,
    task: str,
    kwargs: dict[str, Any],
    task_id: str,
    queue: str,
    summary: dict[str, Any],
    retry_seconds: float,
) -> None:
    app.send_task(
        task,
        kwargs=kwargs,
        task_id=task_id,
        queue=queue,
        kwargsrepr=repr(summary),
        retry=True,
        retry_policy={
            "max_retries": max(1, int(retry_seconds)),
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
    )
