"""The Celery application: configuration fit for long uploads, and the tasks.

Workers run ``celery -A hoist.tasks.app worker`` (``hoist worker`` does it
with the right options). Ranks never import the task bodies: they send by
name through :func:`make_app`.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, signals

from hoist.errors import (
    ArtifactFailed,
    ConfigurationError,
    InvalidMessageError,
    UnauthenticMessageError,
)
from hoist.tasks.broker import transport_for
from hoist.tasks.control import restrict_remote_control
from hoist.tasks.messages import (
    COMMIT_TASK,
    MAX_BATCH,
    SYMLINK_QUEUE,
    SYMLINK_TASK,
    UPLOAD_BATCH_TASK,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
)
from hoist.tasks.records import Claim, State
from hoist.tasks.settings import Settings

log = logging.getLogger("hoist.worker")


_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def redis_tls_options(url: str) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` URL, as Celery's ``broker_use_ssl`` takes them.

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
        >>> redis_tls_options("rediss://redis.lan:6380/0?ssl_ca_certs=/etc/hoist/ca.pem")
        {'ssl_cert_reqs': <VerifyMode.CERT_REQUIRED: 2>, 'ssl_ca_certs': '/etc/hoist/ca.pem'}
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
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


def celery_config(broker_url: str, visibility_timeout: int = 7200) -> dict[str, Any]:
    """Celery settings shared by ranks (sending) and workers (running)."""
    transport = {
        "visibility_timeout": visibility_timeout,
        # kombu 5.7 looks for overdue unacknowledged messages only every
        # interval x throttle = 100 s, so a short visibility timeout would not
        # mean what it says. One cheap scan (a ZRANGE under a lock) at least
        # every 10 s, and every half visibility timeout when that is shorter.
        "unacked_restore_interval": max(1, min(10, visibility_timeout // 2)),
        "unacked_restore_throttle": 1,
    }
    tls = redis_tls_options(broker_url)
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
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_routes": {
            UPLOAD_TASK: {"queue": UPLOAD_QUEUE},
            UPLOAD_BATCH_TASK: {"queue": UPLOAD_QUEUE},
            SYMLINK_TASK: {"queue": SYMLINK_QUEUE},
            COMMIT_TASK: {"queue": SYMLINK_QUEUE},
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


_apps: dict[str, Celery] = {}


def make_app(broker_url: str) -> Celery:
    """A Celery app for sending hoist tasks to ``broker_url`` (one per URL per process)."""
    if broker_url not in _apps:
        sender = Celery("hoist", set_as_current=False)
        sender.conf.update(celery_config(broker_url))
        # Ranks never read task results; with a result backend set, every send
        # would also SUBSCRIBE to the task's result channel (measured: +0.7 ms).
        sender.conf.result_backend = None
        sender.conf.broker_transport = transport_for(broker_url)
        _apps[broker_url] = sender
    return _apps[broker_url]


settings = Settings.from_environment()
app = Celery("hoist")
app.conf.update(celery_config(settings.broker_url, settings.visibility_timeout))
# From the broker, workers take read-only inspections only (see hoist.tasks.control).
signals.worker_init.connect(restrict_remote_control)


REFUSED = "refused"
"""The outcome of a malformed message: acknowledged, never run."""


def refused(task: str, task_id: str, exc: InvalidMessageError) -> dict[str, Any]:
    """Log a malformed message and drop it: it is acknowledged, never run, never retried."""
    what = "an unauthenticated" if isinstance(exc, UnauthenticMessageError) else "a malformed"
    log.error("refused %s %s message (task id %.100r): %s", what, task, task_id, exc)
    return {"id": task_id, "outcome": REFUSED, "error": str(exc)}


FAILED_OUTCOMES = frozenset({State.FAILED.value, Claim.POISON.value, REFUSED})
"""Job outcomes that end an artifact for good without it landing."""


def run_job(task: Any, message: dict[str, Any]) -> dict[str, Any]:
    """Run the job of ``task`` (a bound Celery task) on ``message``; refuse it if malformed.

    Raises:
        ArtifactFailed: the artifact failed for good (see :func:`raise_failures`).
    """
    result = _run_one(task.name, message, task.request.id, task.send_event)
    raise_failures([result])
    return result


def raise_failures(results: list[dict[str, Any]]) -> None:
    """Raise :class:`~hoist.errors.ArtifactFailed` naming each failed result, if any."""
    failed = [result for result in results if result["outcome"] in FAILED_OUTCOMES]
    if not failed:
        return
    shown = "; ".join(f"{result['id']}: {result.get('error') or _POISON}" for result in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    raise ArtifactFailed(f"{len(failed)} of {len(results)} failed: {shown}{more}")


_POISON = "delivered too often without an outcome (workers killed?); see the record"


def run_batch(task: Any, messages: Any) -> dict[str, Any]:
    """Run the upload job of each message of a batch (:func:`~hoist.tasks.messages.send_batch`).

    One after the other: a batch holds small files, and a worker's slots are
    the concurrency. Each member is claimed, uploaded and settled as if it
    had come alone; the batch's result counts their outcomes.

    Raises:
        ArtifactFailed: a member failed for good (the others were done first),
            or the batch itself is malformed.
    """
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_BATCH:
        shown = len(messages) if isinstance(messages, list) else type(messages).__name__
        exc = InvalidMessageError(
            f"a batch must be a list of 1 to {MAX_BATCH} uploads, not {shown}"
        )
        refused(task.name, task.request.id, exc)
        raise ArtifactFailed(str(exc))
    # A member names its own artifact; the claim and the refusal go by it.
    members = [m.get("id") if isinstance(m, dict) else None for m in messages]
    # Celery logs the batch's id only; this says which artifacts it carried.
    log.info("%s carries %s", task.request.id, ", ".join(f"{m!r:.100}" for m in members))
    results = [
        _run_one(
            UPLOAD_TASK,
            message,
            member if isinstance(member, str) else f"{task.request.id}?",
            task.send_event,
        )
        for member, message in zip(members, messages, strict=True)
    ]
    raise_failures(results)
    outcomes = Counter(result["outcome"] for result in results)
    return {"id": task.request.id, "outcome": "batch", "files": len(messages), **outcomes}


def _run_one(task: str, message: dict[str, Any], task_id: str, send_event: Any) -> dict[str, Any]:
    from hoist.tasks.jobs import JOBS
    from hoist.tasks.worker_context import context

    ctx = context()
    try:
        job = JOBS[task](ctx, message, task_id, send_event)
    except InvalidMessageError as exc:
        ctx.records.count_refusal(type(exc).__name__)
        # A rank's own message that workers refuse (a newer or broken sender, a
        # store this fleet does not allow) would stay queued and be re-sent for
        # ever: fail its record, but only when the record holds this very
        # message, so a forged message cannot fail another artifact. One no rank
        # of this fleet signed touches no record at all.
        if not isinstance(exc, UnauthenticMessageError):
            status = ctx.records.get(task_id)
            if status is not None and status.message == message:
                ctx.records.fail_queued(status.id, f"the workers refused its message: {exc}")
        return refused(task, task_id, exc)
    return job.run()


@app.task(name=UPLOAD_TASK, bind=True, throws=(ArtifactFailed,))
def upload(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, message)


@app.task(name=UPLOAD_BATCH_TASK, bind=True, throws=(ArtifactFailed,))
def upload_batch(self: Any, messages: Any) -> dict[str, Any]:
    return run_batch(self, messages)


@app.task(name=SYMLINK_TASK, bind=True, throws=(ArtifactFailed,))
def symlink(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, message)


@app.task(name=COMMIT_TASK, bind=True, throws=(ArtifactFailed,))
def commit(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, message)


@signals.worker_ready.connect
def _start_resender(sender: Any = None, **_: Any) -> None:
    """Send deferred artifacts again when they fall due (see :mod:`hoist.tasks.records`)."""
    from hoist.tasks.resender import Resender
    from hoist.tasks.worker_context import context

    thread = threading.Thread(target=Resender(context(), app).run_forever, daemon=True)
    thread.name = "hoist-resender"
    thread.start()
