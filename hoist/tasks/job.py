"""One delivery of one message: the steps every job follows, and its heartbeat.

Every job (:mod:`hoist.tasks.jobs` names them) follows the same steps
(:class:`Job`): check the message (size, signature, shape, order key, the
fleet's allowed stores), claim the artifact's record (a duplicate delivery
stops here), do the work under leases kept alive by a heartbeat
(:mod:`hoist.tasks.heartbeat`), and settle
the record with an outcome: done, failed, superseded, or deferred to be sent
again later (held back by a limit, or a transient error with backoff).
Deferring never holds a worker slot and never leaves a message
unacknowledged in a worker's memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any, ClassVar

from hoist.errors import (
    HoistError,
    InvalidMessageError,
    StoreError,
    StoreNotAllowedError,
    StoreThrottledError,
)
from hoist.protocol.messages import (
    Message,
    check_message_size,
    check_order,
)
from hoist.protocol.signing import verify
from hoist.state.counters import FleetCounters, Outcome, error_class
from hoist.state.keys import pointer_key
from hoist.state.leases import Leases, name_lock
from hoist.state.schedule import backoff_delay, hold_back_delay
from hoist.state.states import Claim, State
from hoist.state.throttle import Throttle
from hoist.stores.spec import StoreSpec
from hoist.tasks.heartbeat import Heartbeat, LeaseLost
from hoist.tasks.worker_context import WorkerContext

log = logging.getLogger("hoist.worker")


# A client library raising one of these has refused its own request (a value
# it cannot use, an answer it cannot parse): sending the same request again
# gets the same error, so retrying for minutes only hides it (issue 16: a
# Libcloud ValueError against rclone retried 9 times over 3 minutes).
_CLIENT_SIDE = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError)


def is_retryable(exc: Exception) -> bool:
    """Whether the same upload may succeed if tried again unchanged.

    A store error says so itself (``retryable``); another hoist error is a
    decision, final. Of the rest (a client library's own exceptions that its
    store did not translate), an error the client raised about its own
    request is final, and anything else (connections, timeouts, unknown
    library errors) is tried again.

    Example:
        >>> is_retryable(ConnectionResetError()), is_retryable(ValueError("uploadId"))
        (True, False)
    """
    if isinstance(exc, StoreError):
        return exc.retryable
    if isinstance(exc, HoistError):
        return False
    return not isinstance(exc, _CLIENT_SIDE) or isinstance(exc, OSError)


class Job:
    """One delivery of one message.

    Parameters:
        ctx: the job's collaborators (settings, records, stores, clock, jitter);
            a worker builds them per process, a test around its own Redis and store.
        message: the message as it came from the broker.
        task_id: the Celery task id (the artifact id).
        send_event: sends a Celery event about this task (``Task.send_event``),
            if the job runs inside one; Flower shows what it is told.
    """

    task: ClassVar[str]
    message_type: ClassVar[type[Message]]

    def __init__(
        self,
        ctx: WorkerContext,
        message: dict[str, Any],
        task_id: str,
        send_event: Callable[..., Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.send_event = send_event
        # Messages come off a shared broker: anything malformed, unsigned, forged
        # or aimed at a store this fleet does not allow raises InvalidMessageError
        # here, before a record is touched; the task refuses it.
        settings = ctx.settings
        check_message_size(message)
        verify(message, settings.keys, insecure=settings.insecure_unsigned)
        self.message = self.message_type.from_json(message)
        check_order(self.message.order)
        self.spec = StoreSpec.from_json(self.message.store)
        refusal = settings.allowed.refusal(self.spec.kind, self.spec.kwargs, *self.objects())
        if refusal is not None:
            raise StoreNotAllowedError(refusal)
        # A fresh token per delivery: a redelivered message is another claimant.
        self.token = f"{task_id}:{uuid.uuid4().hex[:12]}"
        self.leases = Leases(ctx.records.client, self.token, ctx.settings.lease_ms)
        self.attempt: int | None = None
        self.claimed_marker: str | None = None
        self.earlier_write = False
        # For the fleet's counters (hoist.state.counters), told at the settle.
        self._attempt_counted = False
        self._failed_class = ""
        self._lease_wait = False

    def run(self) -> dict[str, Any]:
        refusal = self.refuse()
        claim, self.claimed_marker = self.ctx.records.claim_reading(
            self.message, self.task, self.token, self.ctx.settings.max_deliveries, self.reads()
        )
        if claim is Claim.MISMATCH:
            log.error(
                "refused a %s message for %s: its record holds another message under that id "
                "(replayed or forged); nothing was changed",
                self.task,
                self.message.id,
            )
        if claim is Claim.FINISHED and refusal is None:
            try:
                self.already_finished()
            except Exception as exc:  # only tidying: the earlier delivery's outcome stands
                log.warning("%s: not tidied after its earlier delivery: %s", self.message.id, exc)
        if claim is not Claim.CLAIMED:
            return {"id": self.message.id, "outcome": claim.value}
        if refusal is not None:
            return self.settle(State.FAILED, error=refusal)
        try:
            return self.work()
        except LeaseLost as exc:
            return self.settle(
                State.RETRYING, retry_in=self.ctx.settings.wait_seconds, error=str(exc)
            )
        except Exception as exc:
            return self.settle_error(exc)
        finally:
            self.leases.release_all()

    def refuse(self) -> str | None:
        """A reason to fail the message without doing anything, or None."""
        return None

    def reads(self) -> str:
        """The key of a marker the work reads first, read in the claim's round trip into
        :attr:`claimed_marker` (``""``: none)."""
        return ""

    def already_finished(self) -> None:
        """Called when this very message's record is finished: another delivery's outcome
        stands; a job may tidy what that delivery could not."""

    def objects(self) -> list[str]:
        """Every object name this job may write or name in its store (checked against
        the fleet's allowed stores)."""
        return [self.message.object_name]

    def work(self) -> dict[str, Any]:
        raise NotImplementedError

    def _same_store(self, recorded: dict[str, Any]) -> bool:
        """Whether a recorded message names this job's store (kind and public arguments;
        each logger seals its credentials apart, so the sealed text may differ)."""
        try:
            return StoreSpec.from_json(recorded.get("store", {})).store_id == self.spec.store_id
        except InvalidMessageError:
            return False

    def begin_attempt(self, **fields: str | float) -> int:
        """Count one try at the store in the record (being held back is not one).

        Every try is counted, not only failed ones, so a record says how often
        the store was tried: 1 for a first-time success or a permanent error.
        Sets :attr:`earlier_write`: whether an earlier attempt began writing.
        """
        self.attempt, self.earlier_write = self.ctx.records.count_attempt(self.message.id, **fields)
        return self.attempt

    def write_pointer(
        self, target: str, before: Callable[[], None] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Point ``message.object_name`` at ``target``, never back to an older order key.

        Runs under the pointer's name lock and a heartbeat: a PUT the store
        holds past a lease time must keep its lock, or a newer pointer is
        written meanwhile and this older one lands over it (measured: a PUT
        stalled 12 s with 3 s leases moved the pointer back;
        tests/test_worker_core_pointers.py).

        Parameters:
            target: what the pointer holds (an object name).
            before: written first, under the same lock (a checkpoint's manifest).
            fields: recorded with the outcome.
        """
        message = self.message
        key = pointer_key(self.spec.store_id, message.object_name)
        if not self.leases.acquire_all([name_lock(self.spec.store_id, message.object_name)]):
            return self.lease_wait("another write of the same pointer")
        with Heartbeat(self):
            if before is not None:
                before()
            current = self.ctx.records.marker(key)
            if current is not None and current > message.order:
                return self.settle(State.SUPERSEDED, **fields)
            if self.attempt is None:
                self.begin_attempt()
            result = self.ctx.store(self.spec).put_bytes(message.object_name, target.encode())
            self.ctx.records.raise_marker(key, message.order)
        return self.settle(
            State.DONE, uri=result.uri, size=result.size, checksum=str(result.checksum), **fields
        )

    def store_answered(self, throttled: bool) -> None:
        """Tell the fleet's ceiling of this store (:mod:`hoist.state.throttle`) how it answered.

        A throttled answer lowers it; a clean one raises it, and is only told
        when a ceiling held at the lease (no round trip while nothing throttles).
        A Redis error here is logged, never the job's outcome.
        """
        if not self.ctx.settings.shared_backoff or not (throttled or self.leases.capped):
            return
        throttle = Throttle(self.ctx.records.client)
        configured = self.ctx.settings.store_limit
        since = self.leases.store_since_ms
        if throttled and since is None:
            return  # no store lease (a pointer): no load of its own to judge by
        try:
            if since is not None and throttled:
                limit = throttle.slowed(self.spec.store_id, configured, since)
                log.warning(
                    "%s: the store throttles; the fleet now sends it at most %d upload(s) at once",
                    self.message.id,
                    max(1, int(limit)),
                )
            else:
                throttle.answered(self.spec.store_id, configured)
        except Exception as exc:
            log.warning("%s: the store's ceiling was not updated: %s", self.message.id, exc)

    # ----- outcomes ---------------------------------------------------------

    def settle(self, state: State, retry_in: float | None = None, **fields: Any) -> dict[str, Any]:
        # The leases and the fleet's counters go in the same round trip; the job ends here.
        held = self.leases.forget_all()
        self.ctx.records.settle(
            self.message.id,
            self.token,
            state,
            retry_in=retry_in,
            release=held,
            count=self._outcome(state, fields),
            **fields,
        )
        if state is State.FAILED:
            log.error("%s (%s) failed: %s", self.message.id, self.message.object_name, fields)
        return {"id": self.message.id, "outcome": state.value, **fields}

    def _outcome(self, state: State, fields: dict[str, Any]) -> list[str | int]:
        """What this settle adds to the fleet's counters (:mod:`hoist.state.counters`), as
        the settle's script reads it; an attempt is counted once per delivery."""
        verified = state is State.DONE and "uri" in fields
        sent = 0 if int(fields.get("already_present", 0)) else int(fields.get("size", 0))
        outcome = Outcome(
            store=self.spec.store_id,
            attempted=self.attempt is not None and not self._attempt_counted,
            failed_class=self._failed_class,
            uploaded_bytes=sent if verified else 0,
            verified=verified,
            lease_wait=self._lease_wait,
        )
        self._attempt_counted = self._attempt_counted or outcome.attempted
        self._failed_class = ""
        self._lease_wait = False
        return FleetCounters.arguments(outcome, self.ctx.clock())

    def lease_wait(self, reason: str) -> dict[str, Any]:
        """Hold back because a limit stayed full (counted as a lease wait)."""
        self._lease_wait = True
        return self.hold_back(reason)

    def hold_back(self, reason: str) -> dict[str, Any]:
        """Try again shortly: a limit is full or a dependency is not ready. Not an attempt."""
        delay = hold_back_delay(self.ctx.settings.wait_seconds, self.ctx.rng.uniform)
        return self.settle(State.WAITING, retry_in=delay, waiting_for=reason)

    def settle_error(self, exc: Exception) -> dict[str, Any]:
        """Retry transient errors with backoff up to ``max_retries``; fail the rest at once."""
        error = f"{type(exc).__name__}: {exc}"
        retryable = is_retryable(exc)
        self._failed_class = error_class(exc)
        if isinstance(exc, StoreThrottledError):
            self.store_answered(throttled=True)
        # An error before the store was tried (building it, say) still counts as a try.
        attempt = self.attempt if self.attempt is not None else self.begin_attempt()
        if not retryable:
            return self.settle(State.FAILED, error=error)
        settings = self.ctx.settings
        if attempt > settings.max_retries:
            return self.settle(State.FAILED, error=f"gave up after {attempt} attempts: {error}")
        delay = backoff_delay(
            attempt, settings.backoff_base, settings.backoff_max, self.ctx.rng.uniform
        )
        # The delay logged is the one used, jitter included, so the log shows the backoff.
        log.warning(
            "%s: attempt %d failed (%s); again in %.2f s", self.message.id, attempt, error, delay
        )
        # When the next try falls due, and since when it has been retrying, so
        # `hoist status`, `hoist wait`, Flower and the rank can say so while it lasts.
        now = self.ctx.clock()
        since = {"retrying_since": now} if attempt == 1 else {}
        return self.settle(
            State.RETRYING, retry_in=delay, error=error, next_attempt_at=now + delay, **since
        )
