"""The fleet's monotonic counters: what workers count at the moment it happens, in Redis.

``hoist exporter`` (:mod:`hoist.commands.exporter`) serves them as Prometheus
counters and a histogram. They live in one Redis hash, :data:`COUNTERS`
(``hoist:counters``), that only ever rises and never expires, so they survive
worker restarts and scale-to-zero, and one exporter serves the fleet's totals
(no multiprocess mode, no sum over pods). A scrape is one ``HGETALL``.

Metrics (labels bounded: ``store`` is the store's key, 16 hex, as leases and
throttle ceilings use it; ``error`` is an exception class name from
:func:`error_class`):

- ``hoist_uploaded_bytes_total{store}``: bytes sent and verified; an object
  found already holding the same bytes adds nothing;
- ``hoist_verified_seconds{store}`` (histogram, :data:`BUCKETS`): from
  ``file_artifact`` (the record's ``enqueued_at``) to the upload verified in
  the store, once per verified upload (redelivered ones included);
- ``hoist_attempts_total{store}``: tries at the store, as the record's
  ``attempts`` counts them (being held back is none);
- ``hoist_attempt_failures_total{store,error}``: tries that raised, by class,
  retried ones included;
- ``hoist_lease_waits_total{store}``: jobs held back because a rank, store
  or name limit (a pointer's lock too) stayed full for the lease wait.

**When counted.** In the job's settle, by the same script
(``settle.lua`` calls the function of ``count_outcome_function.lua`` with
the arguments :meth:`FleetCounters.arguments` makes): a count is never
ahead of its record nor lost after it, and costs no round trip of its own
(about 0.1 ms of a worker's CPU a small file when it had one).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from hoist.errors import HoistError
from hoist.state.keys import PREFIX, reply_text

COUNTERS = f"{PREFIX}counters"
"""The hash of every counter (field ``<metric>|<store>[|<label>]`` -> count)."""

BUCKETS: tuple[float, ...] = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
"""Upper bounds (seconds) of ``hoist_verified_seconds``: from a small file a second
after logging to a large checkpoint behind a long queue."""

OTHER = "Other"
"""The class label of an exception that is no :class:`~hoist.errors.HoistError`
nor a builtin: the label set stays bounded whatever a store library raises."""


def error_class(exc: BaseException) -> str:
    """``exc``'s class name for the ``error`` label, from a bounded set.

    hoist's own errors and Python's builtin exceptions keep their names (both
    finite sets); anything else (a library's own class) is :data:`OTHER`.

    Example:
        >>> error_class(TimeoutError())
        'TimeoutError'
        >>> class Weird(Exception): ...
        >>> error_class(Weird())
        'Other'
    """
    kind = type(exc)
    if isinstance(exc, HoistError) or kind.__module__ == "builtins":
        return kind.__name__
    return OTHER


@dataclass
class Histogram:
    """One store's ``hoist_verified_seconds``: cumulative bucket counts by bound, and the sum."""

    buckets: dict[float, int] = field(default_factory=dict)
    """Upper bound (``float('inf')`` for +Inf) -> outcomes at or under it."""
    total_seconds: float = 0.0

    @property
    def count(self) -> int:
        return self.buckets.get(float("inf"), 0)


@dataclass
class Counters:
    """What :meth:`FleetCounters.read` found, by store (and error class)."""

    uploaded_bytes: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    lease_waits: dict[str, int] = field(default_factory=dict)
    verified: dict[str, Histogram] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """One job outcome to count (see the module's metrics)."""

    store: str
    attempted: bool = False
    failed_class: str = ""
    uploaded_bytes: int = 0
    verified: bool = False
    lease_wait: bool = False


class FleetCounters:
    """Makes the outcomes a settle counts into :data:`COUNTERS`, and reads them back.

    Parameters:
        client: the state Redis.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    @staticmethod
    def arguments(outcome: Outcome, now: float) -> list[str | int]:
        """``outcome`` at ``now`` as ``count_outcome_function.lua`` reads it; empty when
        there is nothing to count.

        Example:
            >>> FleetCounters.arguments(Outcome("ab12"), 0.0)
            []
            >>> FleetCounters.arguments(Outcome("ab12", attempted=True), 0.0)[:4]
            ['ab12', 1, '', 0]
        """
        if not (
            outcome.attempted or outcome.failed_class or outcome.verified or outcome.lease_wait
        ):
            return []
        return [
            outcome.store,
            int(outcome.attempted),
            outcome.failed_class,
            outcome.uploaded_bytes,
            "1" if outcome.verified else "",
            repr(now),
            int(outcome.lease_wait),
            *(_bound(b) for b in BUCKETS),
        ]

    def read(self) -> Counters:
        """Every counter now (one ``HGETALL``)."""
        found = Counters()
        raw: dict[str, str] = self.client.hgetall(COUNTERS)  # type: ignore[assignment]
        for name, number in raw.items():
            metric, _, rest = reply_text(name).partition("|")
            text = reply_text(number)
            if metric == "bytes":
                found.uploaded_bytes[rest] = int(text)
            elif metric == "attempts":
                found.attempts[rest] = int(text)
            elif metric == "lease_waits":
                found.lease_waits[rest] = int(text)
            elif metric == "failures":
                store, _, kind = rest.partition("|")
                found.failures[(store, kind)] = int(text)
            elif metric == "verified_bucket":
                store, _, bound = rest.partition("|")
                histogram = found.verified.setdefault(store, Histogram())
                histogram.buckets[float(bound)] = int(text)
            elif metric == "verified_sum":
                found.verified.setdefault(rest, Histogram()).total_seconds = float(text)
        for histogram in found.verified.values():
            for upper in BUCKETS:  # a bucket no outcome reached was never written
                histogram.buckets.setdefault(float(upper), 0)
        return found


def _bound(bound: float) -> str:
    """A bound as the field names it (``'2.5'``, ``'60'``)."""
    return f"{bound:g}"
