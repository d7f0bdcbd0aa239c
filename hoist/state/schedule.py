"""The deferred schedule: when an artifact is sent again, and why.

``hoist:deferred`` (:data:`hoist.state.keys.DEFERRED`) is a sorted set of
artifact ids scored by a due time, in milliseconds since the epoch. Every
worker's resender (:mod:`hoist.tasks.resender`) takes the entries that fall
due and sends their messages again. One set serves three purposes:

- **Backoff and holding back.** A task that meets a transient error, a full
  concurrency limit or a pointer whose target is not yet verified does not
  sleep in a worker slot: it settles with a due time (:func:`backoff_delay`,
  :func:`hold_back_delay`) and acknowledges its message.
- **The watchdog of a claimed artifact.** A claim puts its artifact there
  :func:`watchdog_due_ms`, a little past its owner's lease, and the owner's
  heartbeat pushes that forward. If the worker dies, the entry falls due and
  the task is sent again, without waiting for the broker's visibility timeout.
- **The watchdog of a message not yet claimed.** The rank puts each newly
  logged artifact there :func:`first_look_due_ms` (most are claimed by then,
  which moves the entry, so the resender need not read them). While its
  record stays ``queued`` (sent, never claimed) the resender looks at it
  again every ``queued_timeout`` and, past that, sends it again
  (:func:`check_queued`). This covers a message the broker no longer holds
  or will only hand back after its visibility timeout (2 h): a worker killed
  between taking the message and claiming it, or a Redis restart under a
  message taken but not claimed (measured in ``tests/test_faults_fleet.py``:
  without this the artifact stayed queued and its rank's ``wait()`` timed
  out). A copy sent while the first still waits in a long queue is
  harmless: the claim stops it.
- **After a failover.** Replication is asynchronous, so a message the old
  master held may be missing on the replica Sentinel promoted. When a
  resender finds its Redis client following a new master, every entry falls
  due at once and a queued artifact last sent before the failover is sent
  again then (:func:`check_queued`'s ``failover_at``), not ``queued_timeout``
  later; the rest are looked at as when they fall due (a claimed artifact
  whose owner renews stays its owner's, one whose task the failover cut off
  is claimed again once its lease runs out).

Taking due entries pushes each :data:`TAKE_GUARD_SECONDS` into the future, so
an entry taken by a resender that dies before sending is taken again later.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

Uniform = Callable[[float, float], float]
"""Draws a number between its two arguments, as :func:`random.uniform` does."""

FIRST_LOOK_SECONDS = 5.0
"""When the watchdog first looks at a newly logged artifact (see above). Due at
once, as it was, the resender read and rescheduled every artifact a moment
after it was logged: three round trips per artifact in the worker's main
process, which a burst of small files pays for in throughput."""

WATCHDOG_LEASES = 2
"""A claimed artifact falls due this many lease times after its last heartbeat."""

TAKE_GUARD_SECONDS = 30.0
"""How far a taken entry is pushed into the future, in case its sender dies."""

BACKOFF_JITTER = (0.5, 1.0)
"""The random factor of a retry's delay: retries of many artifacts spread out."""

HOLD_BACK_JITTER = (1.0, 1.5)
"""The random factor of a held-back task's delay."""


def to_ms(seconds: float) -> int:
    """A time in seconds since the epoch as the set's score, in whole milliseconds.

    Example:
        >>> to_ms(1.2345)
        1234
    """
    return int(seconds * 1000)


def first_look_due_ms(now: float) -> int:
    """When the watchdog first looks at an artifact logged at ``now`` (seconds).

    Example:
        >>> first_look_due_ms(100.0)
        105000
    """
    return to_ms(now + FIRST_LOOK_SECONDS)


def watchdog_due_ms(now_ms: int, lease_ms: int) -> int:
    """When a claimed artifact falls due if its owner stops renewing at ``now_ms``.

    Example:
        >>> watchdog_due_ms(100_000, 30_000)
        160000
    """
    return now_ms + WATCHDOG_LEASES * lease_ms


def backoff_delay(
    attempt: int, base: float, maximum: float, uniform: Uniform = random.uniform
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    The ceiling doubles with each attempt from ``base`` up to ``maximum``; the
    delay is the ceiling times a random factor in :data:`BACKOFF_JITTER`.

    Example:
        >>> highest = lambda low, high: high
        >>> [backoff_delay(n, 1.0, 300.0, highest) for n in (1, 2, 3, 10)]
        [1.0, 2.0, 4.0, 300.0]
        >>> backoff_delay(3, 1.0, 300.0, lambda low, high: low)
        2.0
    """
    ceiling = min(maximum, base * 2 ** (attempt - 1))
    return ceiling * uniform(*BACKOFF_JITTER)


def hold_back_delay(wait_seconds: float, uniform: Uniform = random.uniform) -> float:
    """Seconds a task held back by a limit or a dependency waits before it is tried again.

    Example:
        >>> hold_back_delay(0.5, lambda low, high: high)
        0.75
    """
    return wait_seconds * uniform(*HOLD_BACK_JITTER)


class QueuedCheck(NamedTuple):
    """What the resender does with an artifact whose record is still ``queued``."""

    resend: bool
    """Whether its message is presumed lost and sent again now."""
    waited: float
    """Seconds since it was last sent."""
    look_again_at: float
    """When to look at it again (seconds since the epoch)."""


def check_queued(
    enqueued_at: float, resent_at: float, timeout: float, now: float, failover_at: float = 0.0
) -> QueuedCheck:
    """The resender's trigger for a queued (sent, never claimed) artifact.

    Parameters:
        enqueued_at: when the rank sent it (the record's ``enqueued_at``).
        resent_at: when a resender last sent it again (``resent_at``; 0 if never).
        timeout: ``queued_timeout``: how long a message may wait unclaimed.
        now: the current time.
        failover_at: when the resender last saw the state Redis fail over (0: never).

    Returns:
        Before the timeout: do not send, look again when it runs out. Past it,
        or when it was last sent before a failover (its message may have been
        lost with the old master): send again, and look again one timeout later.

    Example:
        >>> check_queued(enqueued_at=1000.0, resent_at=0.0, timeout=300.0, now=1100.0)
        QueuedCheck(resend=False, waited=100.0, look_again_at=1300.0)
        >>> check_queued(enqueued_at=1000.0, resent_at=0.0, timeout=300.0, now=1400.0)
        QueuedCheck(resend=True, waited=400.0, look_again_at=1700.0)
        >>> check_queued(1000.0, 0.0, timeout=300.0, now=1100.0, failover_at=1090.0)
        QueuedCheck(resend=True, waited=100.0, look_again_at=1400.0)
    """
    sent = max(enqueued_at, resent_at)
    if now < sent + timeout and sent >= failover_at:
        return QueuedCheck(False, now - sent, sent + timeout)
    return QueuedCheck(True, now - sent, now + timeout)
