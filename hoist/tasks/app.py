"""The workers' Celery application, built from settings: configuration, tasks, signals.

:func:`worker_app` builds it; ``hoist worker`` (:mod:`hoist.workers.worker`)
resolves its settings once and calls it before Celery's pool forks, so every
pool process inherits the same app and settings. The tasks are thin
adapters: each runs :func:`~hoist.tasks.delivery.deliver` with the
process's :class:`~hoist.tasks.worker_context.WorkerContext`, then ends as
Flower should show the outcome (:func:`show`; why each outcome ends as it
does: :class:`~hoist.tasks.delivery.Shown`). Ranks never
import this module: they send by name through
:func:`hoist.protocol.sending.sender`.

Importing this module reads nothing. For Celery's own command line only
(``celery -A hoist.tasks.app inspect ping``, the containers' health check;
``celery -A hoist.tasks.app control ...``; ``hoist flower`` builds its own
with :func:`worker_app`), the module attribute ``app`` is built on first
access from the environment
(:meth:`~hoist.settings.WorkerSettings.from_environment`): Celery's
``find_app`` imports the module and reads its ``app`` attribute.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from celery import Celery, signals
from celery.exceptions import Ignore, Retry

from hoist.errors import ArtifactFailed, HoistError
from hoist.protocol.messages import UPLOAD_BATCH_TASK
from hoist.protocol.sending import celery_config
from hoist.settings import WorkerSettings
from hoist.tasks.control import restrict_remote_control
from hoist.tasks.delivery import (
    FAILURE,
    RETRY,
    SUCCESS,
    Shown,
    batch_outcome,
    deliver,
    deliver_members,
    failures,
    shown,
    shown_batch,
)
from hoist.tasks.jobs import JOBS
from hoist.tasks.resender import Resender
from hoist.tasks.worker_context import PerProcess, WorkerContext


def worker_app(
    settings: WorkerSettings, contexts: Callable[[], WorkerContext] | None = None
) -> Celery:
    """A Celery app for workers with ``settings``: its tasks and its signal handlers.

    Parameters:
        settings: the worker's settings, resolved once at its start.
        contexts: gives the calling process's job collaborators (default:
            built from ``settings`` once per process, :class:`PerProcess`).

    The app's handlers act only for a worker of this app: on ``worker_init``
    it answers read-only remote control only (:mod:`hoist.tasks.control`); on
    ``worker_ready`` it starts the resender thread (:mod:`hoist.tasks.resender`).
    """
    app = Celery("hoist")
    app.conf.update(
        celery_config(settings.broker_url, settings.visibility_timeout, settings.sentinel)
    )
    context = contexts or PerProcess(lambda: WorkerContext.from_settings(settings))

    def run_job(task: Any, message: Any) -> dict[str, Any]:
        ctx = context()
        result = deliver(ctx, task.name, message, task.request.id, task.send_event)
        how = shown(task.name, result, ctx.clock(), ctx.settings.wait_seconds)
        return show(task, how, [result], result)

    def run_batch(task: Any, messages: Any) -> dict[str, Any]:
        ctx = context()
        try:
            results = deliver_members(ctx, task.name, messages, task.request.id, task.send_event)
        except ArtifactFailed as exc:  # a malformed batch: its refusal is the result
            return show(task, Shown(FAILURE, str(exc)), [], {})
        how = shown_batch(results, ctx.clock(), ctx.settings.wait_seconds)
        return show(task, how, results, batch_outcome(task.request.id, results))

    # One task per job (hoist.tasks.jobs.JOBS names them), and the batch of uploads.
    bodies = {name: run_job for name in JOBS} | {UPLOAD_BATCH_TASK: run_batch}
    for name, body in bodies.items():
        app.task(name=name, bind=True, throws=(ArtifactFailed,))(body)

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            # From the broker, workers take read-only inspections only.
            restrict_remote_control(sender)

    def on_worker_ready(sender: Any = None, **_: Any) -> None:
        """Send deferred artifacts again when they fall due (see :mod:`hoist.state.schedule`)."""
        if getattr(sender, "app", None) is not app:
            return
        resender = Resender.for_worker(context(), app)
        thread = threading.Thread(target=resender.run_forever, daemon=True)
        thread.name = "hoist-resender"
        thread.start()

    # Strong references: the receivers are closures nothing else holds.
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_ready.connect(on_worker_ready, weak=False)
    return app


log = logging.getLogger("hoist.worker")


class Deferred(HoistError):
    """Why a task will run again: what Celery's ``Retry`` carries, and Flower's exception."""


def show(
    task: Any, how: Shown | None, results: list[dict[str, Any]], result: dict[str, Any]
) -> dict[str, Any]:
    """End a task so that Flower shows ``how`` (see :class:`~hoist.tasks.delivery.Shown`).

    Returns ``result`` for a success; otherwise sends the event that carries
    the text and raises what makes Celery end the task in that state.

    Raises:
        ArtifactFailed: a failure (Celery: FAILURE, logged without a traceback).
        Retry: the artifact is deferred; hoist's resender sends it again.
        Ignore: any other state, or nothing to show (a duplicate delivery).
    """
    if how is None:
        raise Ignore("a duplicate delivery: the artifact's record says what became of it")
    if how.state == SUCCESS:
        return result
    try:
        task.send_event(how.event, result=how.text)
    except Exception as exc:  # a lost event must never change the outcome
        log.debug("%s event of %s not sent: %s", how.event, task.request.id, exc)
    _end(how, results)


def _end(how: Shown, results: list[dict[str, Any]]) -> NoReturn:
    if how.state == FAILURE:
        # The exception names each failed artifact, as raise_failures does.
        raise ArtifactFailed(failures(results) or how.text)
    if how.state == RETRY:
        raise Retry(how.text, Deferred(how.text))
    raise Ignore(how.text)


_from_environment: Celery | None = None
_lock = threading.Lock()


def __getattr__(name: str) -> Celery:
    """``app``: the app of Celery's command line, from the environment (see above)."""
    global _from_environment
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lock:
        if _from_environment is None:
            _from_environment = worker_app(WorkerSettings.from_environment())
        return _from_environment
