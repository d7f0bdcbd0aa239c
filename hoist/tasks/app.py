"""The Celery application: configuration fit for long uploads, and the tasks.

Workers run ``celery -A hoist.tasks.app worker`` (``hoist worker`` does it
with the right options). Ranks never import the task bodies: they send by
name through :func:`make_app`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery, signals

from hoist.tasks.messages import (
    COMMIT_TASK,
    SYMLINK_QUEUE,
    SYMLINK_TASK,
    UPLOAD_QUEUE,
    UPLOAD_TASK,
)
from hoist.tasks.settings import Settings

log = logging.getLogger("hoist.worker")


def celery_config(broker_url: str, visibility_timeout: int = 7200) -> dict[str, Any]:
    """Celery settings shared by ranks (sending) and workers (running)."""
    transport = {"visibility_timeout": visibility_timeout}
    return {
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
        _apps[broker_url] = sender
    return _apps[broker_url]


settings = Settings.from_environment()
app = Celery("hoist")
app.conf.update(celery_config(settings.broker_url, settings.visibility_timeout))


@app.task(name=UPLOAD_TASK, bind=True)
def upload(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    from hoist.tasks.jobs import UploadJob
    from hoist.tasks.worker_context import context

    return UploadJob(context(), message, self.request.id, self.send_event).run()


@app.task(name=SYMLINK_TASK, bind=True)
def symlink(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    from hoist.tasks.jobs import SymlinkJob
    from hoist.tasks.worker_context import context

    return SymlinkJob(context(), message, self.request.id).run()


@app.task(name=COMMIT_TASK, bind=True)
def commit(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    from hoist.tasks.jobs import CommitJob
    from hoist.tasks.worker_context import context

    return CommitJob(context(), message, self.request.id).run()


@signals.worker_ready.connect
def _start_resender(sender: Any = None, **_: Any) -> None:
    """Send deferred artifacts again when they fall due (see :mod:`hoist.tasks.records`)."""
    from hoist.tasks.resender import Resender
    from hoist.tasks.worker_context import context

    thread = threading.Thread(target=Resender(context(), app).run_forever, daemon=True)
    thread.name = "hoist-resender"
    thread.start()
