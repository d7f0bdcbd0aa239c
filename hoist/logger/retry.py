"""The rank's calls to the state Redis, retried through a short outage.

A rank writes a record before it hands the message over (the record is the
promise that the artifact will be uploaded), so a Redis restart must not fail
the training step at once: the call is tried again, backing off from 0.2 s to
at most 2 s, until ``enqueue_timeout`` seconds have passed. Only then does
the caller get an :class:`~hoist.errors.EnqueueError` that says where the
rank tried to reach (without its password) and what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

from hoist.errors import EnqueueError

T = TypeVar("T")

FIRST_DELAY = 0.2
"""Seconds before the first retry; each retry waits twice as long as the last."""
MAX_DELAY = 2.0
"""Longest wait between two tries, in seconds."""


class StateRetry:
    """Calls the state Redis until it answers or ``timeout`` seconds have passed.

    Parameters:
        timeout: seconds to keep trying (the logger's ``enqueue_timeout``).
        shown: the state Redis' URL as it may be shown, its password masked
            (:func:`hoist.protocol.urls.mask_url`).
        sleep: waits between tries; tests pass a fake.

    Example:
        >>> retry = StateRetry(1.0, "redis://:****@redis.lan:6379/0")
        >>> retry(lambda: "OK")
        'OK'
    """

    def __init__(
        self, timeout: float, shown: str, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.timeout = timeout
        self.shown = shown
        self._sleep = sleep

    def __call__(
        self, call: Callable[[], T], kept: str = "", then: str = "log the artifact again"
    ) -> T:
        """Return ``call()``, retried while Redis cannot be reached.

        Parameters:
            call: one Redis operation (a record write, a reservation).
            kept: appended to the error, e.g. where the staged file was kept.
            then: what to do once Redis is back, as the error says it.

        Raises:
            EnqueueError: Redis was unreachable for ``timeout`` seconds.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        delay = FIRST_DELAY
        while True:
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    # The time actually spent trying, not the budget: the two
                    # differ by up to a backoff step, and a user checks one
                    # against the other.
                    waited = time.monotonic() - started
                    raise EnqueueError(
                        f"the hoist state store (Redis) at {self.shown} is unreachable "
                        f"after {waited:.1f} s of trying: start it or fix HOIST_STATE_URL / "
                        f"HOIST_BROKER_URL, then {then}; {exc}{kept}"
                    ) from exc
                self._sleep(delay)
                delay = min(delay * 2, MAX_DELAY)
