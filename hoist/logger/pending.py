"""What a rank waits for: its artifacts not yet finished, and the failures among them.

An artifact is pending from the moment its record is written until the
record reaches a terminal state (done or failed) on the fleet.
:meth:`PendingArtifacts.wait` asks the state Redis after them, the oldest
first and :data:`WAIT_WINDOW` at a time, and raises once for every failure it
found, naming each artifact with the cause the worker recorded.
"""

from __future__ import annotations

import itertools
import logging
import time

import redis

from hoist.errors import UploadFailedError, WaitTimeoutError
from hoist.protocol.messages import Message
from hoist.state.records import Records
from hoist.state.states import State

log = logging.getLogger("hoist.rank")

WAIT_WINDOW = 64
"""Pending artifacts ``wait()`` asks after in one poll, the oldest first."""

Failure = tuple[str, str, str]
"""A failed artifact as reported: its name, its object name, the recorded error."""


class PendingArtifacts:
    """A rank's artifacts whose records are not terminal yet, in the order they were logged.

    Parameters:
        records: the state store holding the artifacts' records.
        run_name: the run, for the messages of errors.
        rank: this rank, for the messages of errors.
        state_shown: the state Redis' URL with its password masked, for warnings.
    """

    def __init__(self, records: Records, run_name: str, rank: int, state_shown: str) -> None:
        self._records = records
        self._run_name = run_name
        self._rank = rank
        self._state_shown = state_shown
        self._pending: dict[str, Message] = {}
        self._failures: list[Failure] = []  # found by wait(), not yet raised
        self._state_unreachable = False  # warned once per outage

    def add(self, message: Message) -> None:
        """Wait for ``message``'s artifact from now on (its record is written)."""
        self._pending[message.id] = message

    def clear(self) -> None:
        """Forget every pending artifact (a forked child does not wait for its parent's)."""
        self._pending.clear()

    def __contains__(self, artifact: object) -> bool:
        return artifact in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def wait(self, deadline: float | None, timeout: float | None, poll_interval: float) -> None:
        """Block until no artifact is pending; see :meth:`ObjectStoreLogger.wait`.

        Parameters:
            deadline: ``time.monotonic()`` to give up at, or None for never.
            timeout: the caller's timeout, as the error quotes it.
            poll_interval: seconds between two polls of Redis.

        Raises:
            UploadFailedError: every failure not reported before, once all finished.
            WaitTimeoutError: artifacts still pending at ``deadline``; failures
                seen so far are kept for a later call.
        """
        failures = self._failures  # kept across a timeout, reported once
        while self._pending:
            # The oldest first, a window at a time: uploads finish roughly in the
            # order they were logged, and asking after thousands of pending
            # artifacts every poll cost a rank more CPU than logging them.
            window = list(itertools.islice(self._pending, WAIT_WINDOW))
            if self._collect(window, failures) == WAIT_WINDOW:
                continue  # the whole window finished: look at the next one now
            if deadline is not None and time.monotonic() >= deadline:
                self._collect(list(self._pending), failures)  # the count below is exact
                raise WaitTimeoutError(
                    f"{len(self._pending)} upload(s) of run {self._run_name!r} rank "
                    f"{self._rank} still pending after {timeout} s"
                    + (f" and {len(failures)} failed" if failures else "")
                    + f"; `hoist status --run {self._run_name}` shows them"
                )
            time.sleep(poll_interval)
        if failures:
            self._failures = []
            lines = "\n".join(f"  {name} ({obj}): {error}" for name, obj, error in failures)
            raise UploadFailedError(
                f"{len(failures)} upload(s) of run {self._run_name!r} rank {self._rank} "
                f"failed:\n{lines}",
                failures,
            )

    def _collect(self, artifacts: list[str], failures: list[Failure]) -> int:
        """Drop finished ``artifacts`` from the pending ones, noting failures; return how many."""
        try:
            states = self._records.states(artifacts) if artifacts else {}
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The uploads go on without Redis' answers; wait() keeps asking until its deadline.
            if not self._state_unreachable:
                log.warning(
                    "wait: Redis at %s unreachable (%s); still waiting", self._state_shown, exc
                )
            self._state_unreachable = True
            return 0
        self._state_unreachable = False
        finished = 0
        for artifact, state in states.items():
            if state.terminal:
                finished += 1
                message = self._pending.pop(artifact)
                if state is State.FAILED:
                    failures.append(self._failure(message))
        return finished

    def _failure(self, message: Message) -> Failure:
        status = self._records.get(message.id)
        error = status.error if status is not None else "its record is gone"
        return message.artifact_name, message.object_name, error
