"""One delivery from the broker: the job it names, run, or the message refused.

The worker core without Celery: :func:`deliver` and :func:`deliver_batch`
take the message as it came off the broker and the job's collaborators
(:class:`~hoist.tasks.worker_context.WorkerContext`), and return the
outcome. The Celery tasks (:mod:`hoist.tasks.app`) only adapt them; tests
call them directly (tests/test_worker_core.py).

:func:`shown` and :func:`shown_batch` say how Flower should show an
outcome (:class:`Shown`); the tasks make Celery's events say it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hoist.errors import ArtifactFailed, InvalidMessageError, UnauthenticMessageError
from hoist.protocol.messages import COMMIT_TASK, MAX_BATCH, POINTER_TASK, UPLOAD_TASK
from hoist.state.schedule import HOLD_BACK_JITTER
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


def failures(results: list[dict[str, Any]]) -> str | None:
    """What failed for good among ``results``, each by id with its error; None if nothing did.

    Example:
        >>> failures([{"id": "a", "outcome": "done"}, {"id": "b", "outcome": "failed",
        ...           "error": "no space"}])
        '1 of 2 failed: b: no space'
    """
    failed = [result for result in results if result["outcome"] in FAILED_OUTCOMES]
    if not failed:
        return None
    shown = "; ".join(f"{result['id']}: {_error(result)}" for result in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    return f"{len(failed)} of {len(results)} failed: {shown}{more}"


def raise_failures(results: list[dict[str, Any]]) -> None:
    """Raise :class:`~hoist.errors.ArtifactFailed` naming each failed result, if any."""
    failed = failures(results)
    if failed is not None:
        raise ArtifactFailed(failed)


def _error(result: dict[str, Any]) -> str:
    return str(result.get("error") or _POISON)


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
    had come alone; the batch's result counts their outcomes
    (:func:`batch_outcome`).

    Raises:
        ArtifactFailed: a member failed for good (the others were done first),
            or the batch itself is malformed.
    """
    results = deliver_members(ctx, task, messages, batch_id, send_event)
    raise_failures(results)
    return batch_outcome(batch_id, results)


def deliver_members(
    ctx: WorkerContext,
    task: str,
    messages: Any,
    batch_id: str,
    send_event: EventSender | None = None,
) -> list[dict[str, Any]]:
    """Each member's outcome of a batch, as :func:`deliver_batch` runs them, without raising
    for a member that failed.

    Raises:
        ArtifactFailed: the batch itself is malformed (refused; nothing ran).
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
    return [
        deliver(
            ctx,
            UPLOAD_TASK,
            message,
            member if isinstance(member, str) else f"{batch_id}?",
            send_event,
        )
        for member, message in zip(members, messages, strict=True)
    ]


def batch_outcome(batch_id: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch's result: how many files, and how many of them ended in each outcome.

    Example:
        >>> batch_outcome("b", [{"outcome": "done"}, {"outcome": "done"}])
        {'id': 'b', 'outcome': 'batch', 'files': 2, 'done': 2}
    """
    outcomes = Counter(result["outcome"] for result in results)
    return {"id": batch_id, "outcome": "batch", "files": len(results), **outcomes}


# ----- what Flower shows -------------------------------------------------------

SUCCESS, FAILURE, RETRY = "SUCCESS", "FAILURE", "RETRY"
"""Celery's own states, which Flower colours: green, red, yellow."""
SUPERSEDED, DEFERRED = "SUPERSEDED", "DEFERRED"
"""hoist's own states, for outcomes Celery has no word for (Flower shows them grey)."""

_DUPLICATES = frozenset({Claim.BUSY.value, Claim.FINISHED.value, Claim.MISMATCH.value})
_DEFERRED = frozenset({State.WAITING.value, State.RETRYING.value})
_SUPERSEDED_BY = {
    UPLOAD_TASK: "superseded: a newer version of this name was logged; this one is not uploaded",
    POINTER_TASK: "superseded by a newer pointer; this one is not written",
    COMMIT_TASK: "superseded: a later step holds the pointer; this step's manifest is written",
}


@dataclass(frozen=True)
class Shown:
    """How Flower shows one task's outcome.

    Flower builds a task's row from Celery's events (``celery.events.state``):
    the state is the last event's, except that an event which by Celery's
    precedence comes *before* the current state only adds fields, and the
    Result column is the last ``result`` any event carried. So:

    - ``SUCCESS``: the task returns its result (Celery's ``task-succeeded``).
    - ``FAILURE``: the artifact failed for good. The task raises
      :class:`~hoist.errors.ArtifactFailed`; Celery's ``task-failed`` carries
      the exception but no result, so the event before it carries the error
      as the result, and the error shows in the tasks table, not only on the
      task's own page.
    - ``RETRY``: the artifact is deferred (``waiting`` for a limit or a
      pointer's target, ``retrying`` after a transient error) and the same
      task id is sent again when it falls due. Celery's own RETRY state,
      not a state of hoist's: Flower colours it (yellow), filters by it and
      counts it (``task-retried``), and, unlike a custom state, it gives way
      to the ``task-received`` of the next delivery, so the row follows the
      artifact. The task raises Celery's ``Retry`` without sending anything:
      hoist's resender does the sending.
    - ``SUPERSEDED``, ``DEFERRED``: finished without a Celery word for it (a
      newer version won; a batch whose deferred members are sent again on
      their own, under their own ids). The task's event sets the state and
      the task raises Celery's ``Ignore``, so no ``task-succeeded`` follows
      to paint it green.

    Parameters:
        state: the state Flower shows.
        text: the Result column, for a person; empty for a plain success.
    """

    state: str
    text: str = ""

    @property
    def event(self) -> str:
        """The Celery event that carries :attr:`text`: ``task-<state>``.

        For a state of hoist's own it sets the state too (Celery takes an
        unknown ``task-*`` event's name as the state); before ``FAILURE`` and
        ``RETRY`` it is the same state Celery's own event sets a moment later.

        Example:
            >>> Shown(SUPERSEDED, "superseded by a newer pointer").event
            'task-superseded'
        """
        return f"task-{self.state.lower()}"


def shown(task: str, result: dict[str, Any], now: float, wait_seconds: float) -> Shown | None:
    """How Flower should show the outcome of one job; None to leave Flower's row as it is.

    A duplicate delivery (another worker has the artifact, or it is finished,
    or the record holds another message under its id) shows nothing: its row
    is the first delivery's, and a forged message must not repaint it.

    Parameters:
        task: the task name.
        result: what :func:`deliver` returned.
        now: the worker's clock (seconds since the epoch), for "in N s".
        wait_seconds: the workers' hold-back time (``HOIST_WAIT_SECONDS``).

    Example:
        >>> shown("hoist.symlink", {"id": "p", "outcome": "waiting",
        ...       "waiting_for": "its target 'ep1.pt'"}, now=0, wait_seconds=0.5).text
        "waiting for its target 'ep1.pt'; sent again within 0.75 s"
        >>> shown("hoist.upload", {"id": "u", "outcome": "retrying", "error": "OSError: reset",
        ...       "next_attempt_at": 104.0}, now=100.0, wait_seconds=0.5).text
        'retrying after OSError: reset; next attempt in 4 s'
    """
    outcome = result["outcome"]
    if outcome in FAILED_OUTCOMES:
        return Shown(FAILURE, f"failed: {_error(result)}")
    if outcome == State.RETRYING.value:
        due = float(result.get("next_attempt_at") or now)
        return Shown(RETRY, f"retrying after {_error(result)}; next attempt in {_in(due - now)}")
    if outcome == State.WAITING.value:
        within = _in(wait_seconds * HOLD_BACK_JITTER[1])
        return Shown(RETRY, f"waiting for {result.get('waiting_for')}; sent again within {within}")
    if outcome == State.SUPERSEDED.value:
        return Shown(SUPERSEDED, _SUPERSEDED_BY.get(task, "superseded by a newer version"))
    if outcome in _DUPLICATES:
        return None
    return Shown(SUCCESS)


def shown_batch(results: list[dict[str, Any]], now: float, wait_seconds: float) -> Shown:
    """How Flower should show a batch, from its members' outcomes.

    ``FAILURE`` if a member failed for good; ``DEFERRED`` if one is waiting
    or retrying (it is sent again alone, under its own id, so the batch
    itself is finished); else ``SUCCESS``, its result counting the outcomes.

    Example:
        >>> shown_batch([{"id": "a", "outcome": "done"}, {"id": "b", "outcome": "retrying",
        ...              "error": "OSError: reset", "next_attempt_at": 2.0}], 0, 0.5).text
        '1 of 2 done; 1 sent again on its own: b retrying after OSError: reset; next attempt in 2 s'
    """
    failed = failures(results)
    if failed is not None:
        return Shown(FAILURE, failed)
    deferred = [result for result in results if result["outcome"] in _DEFERRED]
    if not deferred:
        return Shown(SUCCESS)
    done = sum(result["outcome"] == State.DONE.value for result in results)
    each = "; ".join(
        f"{result['id']} {described.text}"
        for result in deferred[:3]
        if (described := shown(UPLOAD_TASK, result, now, wait_seconds)) is not None
    )
    more = f"; and {len(deferred) - 3} more" if len(deferred) > 3 else ""
    own = "its own" if len(deferred) == 1 else "their own"
    return Shown(
        DEFERRED,
        f"{done} of {len(results)} done; {len(deferred)} sent again on {own}: {each}{more}",
    )


def _in(seconds: float) -> str:
    """A delay as a person reads it: ``4 s``, ``0.75 s``, ``120 s``."""
    seconds = max(seconds, 0.0)
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2g} s"
