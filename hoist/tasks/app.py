"""The Celery application: configuration fit for long uploads, and the tasks.

Workers run ``celery -A hoist.tasks.app worker`` (``hoist worker`` does it
with the right options). Ranks never import the task bodies: they send by
name through :func:`hoist.protocol.sending.sender`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

from celery import Celery, signals

from hoist.errors import (
    ArtifactFailed,
    InvalidMessageError,
    UnauthenticMessageError,
)
from hoist.protocol.messages import (
    COMMIT_TASK,
    MAX_BATCH,
    POINTER_TASK,
    UPLOAD_BATCH_TASK,
    UPLOAD_TASK,
)
from hoist.protocol.sending import celery_config
from hoist.settings import WorkerSettings
from hoist.state.records import Claim, State
from hoist.tasks.control import restrict_remote_control

log = logging.getLogger("hoist.worker")


settings = WorkerSettings.from_environment()
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
    """Run the upload job of each message of a batch (:func:`~hoist.protocol.messages.send_batch`).

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


@app.task(name=POINTER_TASK, bind=True, throws=(ArtifactFailed,))
def symlink(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, message)


@app.task(name=COMMIT_TASK, bind=True, throws=(ArtifactFailed,))
def commit(self: Any, message: dict[str, Any]) -> dict[str, Any]:
    return run_job(self, message)


@signals.worker_ready.connect
def _start_resender(sender: Any = None, **_: Any) -> None:
    """Send deferred artifacts again when they fall due (see :mod:`hoist.state.records`)."""
    from hoist.tasks.resender import Resender
    from hoist.tasks.worker_context import context

    thread = threading.Thread(target=Resender.for_worker(context(), app).run_forever, daemon=True)
    thread.name = "hoist-resender"
    thread.start()
