"""One delivery from the broker: the job it names, run, or the message refused.

The worker core without Celery: :func:`deliver` and :func:`deliver_batch`
take the message as it came off the broker and the job's collaborators
(:class:`~hoist.tasks.worker_context.WorkerContext`), and return the
outcome. The Celery tasks (:mod:`hoist.tasks.app`) only adapt them; tests
call them directly (tests/test_worker_core.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from hoist.errors import ArtifactFailed, InvalidMessageError, UnauthenticMessageError
from hoist.protocol.messages import MAX_BATCH, UPLOAD_TASK
from hoist.state.states import Claim, State
from hoist.tasks.jobs import JOBS
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.worker")

REFUSED = "refused"
"""The outcome of a malformed message: acknowledged, never run."""

FAILED_OUTCOMES = frozenset({State.FAILED.value, Claim.POISON.value, REFUSED})
"""Job outcomes that end an artifact for good without it landing."""

_POISON = "delivered too often without an outcome (workers killed?); see the record"

EventSender = Callable[..., Any]
"""Sends a Celery event about the running task (``Task.send_event``)."""


def refused(task: str, task_id: str, exc: InvalidMessageError) -> dict[str, Any]:
    """Log a malformed message and drop it: it is acknowledged, never run, never retried."""
    what = "an unauthenticated" if isinstance(exc, UnauthenticMessageError) else "a malformed"
    log.error("refused %s %s message (task id %.100r): %s", what, task, task_id, exc)
    return {"id": task_id, "outcome": REFUSED, "error": str(exc)}


def raise_failures(results: list[dict[str, Any]]) -> None:
    """Raise :class:`~hoist.errors.ArtifactFailed` naming each failed result, if any."""
    failed = [result for result in results if result["outcome"] in FAILED_OUTCOMES]
    if not failed:
        return
    shown = "; ".join(f"{result['id']}: {result.get('error') or _POISON}" for result in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    raise ArtifactFailed(f"{len(failed)} of {len(results)} failed: {shown}{more}")


def deliver(
    ctx: WorkerContext,
    task: str,
    message: Any,
    task_id: str,
    send_event: EventSender | None = None,
) -> dict[str, Any]:
    """Run the job of ``task`` on ``message``, or refuse the message; return the outcome.

    Parameters:
        ctx: the job's collaborators.
        task: the task name (:data:`~hoist.tasks.jobs.JOBS` names its job).
        message: the message as it came from the broker, unchecked.
        task_id: the Celery task id (the artifact id, as the rank sent it).
        send_event: sends Celery events about the task (Flower's progress), if any.
    """
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


def deliver_batch(
    ctx: WorkerContext,
    task: str,
    messages: Any,
    batch_id: str,
    send_event: EventSender | None = None,
) -> dict[str, Any]:
    """Run the upload job of each message of a batch (:func:`~hoist.protocol.sending.send_batch`).

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
        refused(task, batch_id, exc)
        raise ArtifactFailed(str(exc))
    # A member names its own artifact; the claim and the refusal go by it.
    members = [m.get("id") if isinstance(m, dict) else None for m in messages]
    # Celery logs the batch's id only; this says which artifacts it carried.
    log.info("%s carries %s", batch_id, ", ".join(f"{m!r:.100}" for m in members))
    results = [
        deliver(
            ctx,
            UPLOAD_TASK,
            message,
            member if isinstance(member, str) else f"{batch_id}?",
            send_event,
        )
        for member, message in zip(members, messages, strict=True)
    ]
    raise_failures(results)
    outcomes = Counter(result["outcome"] for result in results)
    return {"id": batch_id, "outcome": "batch", "files": len(messages), **outcomes}
