"""The fleet's backlog as it stands, read from Redis in a few bounded round trips.

``hoist exporter`` (:mod:`hoist.commands.exporter`) serves these figures to
Prometheus; KEDA scales the workers on :attr:`FleetGauges.backlog_total`.
Everything is read at the moment of asking, and nothing here grows with
the number of records Redis keeps (two weeks of them):

- **queued**: messages waiting in the broker's lists for a worker (``LLEN``
  of ``hoist.uploads``, ``hoist.symlinks`` and the node queues named). A
  batch of small uploads is one message.
- **in flight**: messages a worker has taken and not yet acknowledged
  (``HLEN`` of kombu's ``unacked`` hash: with late acks and a prefetch of 1,
  the tasks running and the one each pool process holds next). A held-back
  or retrying task acknowledges its message, so it is not counted here.
- **scheduled**: ``ZCARD`` of the deferred schedule (:mod:`hoist.state.schedule`).
  Every unfinished artifact has an entry there from ``Records.create`` until
  it settles done or failed (the watchdog of a queued or claimed artifact,
  the due time of a held-back or retrying one), so this one number counts
  the whole backlog of artifacts.
- **deferred**: the artifacts the schedule holds that neither a queue nor a
  worker holds: held back for a limit or a pointer's target, retrying after a
  backoff, or whose message was lost (the watchdog sends it again). It is
  ``scheduled - queued - in flight``, never below 0; so the artifacts of a
  batch beyond its first, and those of node queues not named, count here.

``queued + in flight + deferred`` is therefore at least every unfinished
artifact and at least every message waiting, whichever is larger: it is 0
only when nothing is left to do, which is what scaling to zero needs.

Artifacts by state and the oldest pending artifact's age are counted over
the :data:`RECENT_RUNS` most recently active runs, each's
:data:`PER_RUN` most recently logged artifacts (one ``ZREVRANGE`` and one
script call per run): a bounded read, not a scan of every record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis

from hoist.protocol.messages import POINTER_QUEUE, UPLOAD_QUEUE, node_queue
from hoist.state.keys import DEFERRED, run_key
from hoist.state.records import Records
from hoist.state.states import State
from hoist.state.throttle import Ceiling, Throttle

RECENT_RUNS = 20
"""Runs whose artifacts are counted by state (the most recently active)."""
PER_RUN = 2000
"""Most recently logged artifacts read of each of those runs."""
UNACKED = "unacked"
"""kombu's hash of messages delivered to a worker and not acknowledged (its ``unacked_key``)."""


@dataclass(frozen=True)
class FleetGauges:
    """One reading of the fleet's backlog.

    Parameters:
        queued: messages waiting in the broker's queue lists.
        in_flight: messages workers hold, unacknowledged.
        scheduled: entries of the deferred schedule: unfinished artifacts.
        ceilings: the throttle ceilings in force, by store.
        artifacts: artifacts per state over the recent runs read.
        oldest_pending: seconds since the oldest unfinished artifact among those
            was logged; 0 when none is unfinished.
        runs: how many runs were read.

    Example:
        >>> gauges = FleetGauges(queued=2, in_flight=1, scheduled=7)
        >>> gauges.deferred, gauges.backlog_total
        (4, 7)
        >>> FleetGauges(queued=3, in_flight=0, scheduled=1).backlog_total  # a store check waits
        3
    """

    queued: int
    in_flight: int
    scheduled: int
    ceilings: list[Ceiling] = field(default_factory=list)
    artifacts: dict[State, int] = field(default_factory=dict)
    oldest_pending: float = 0.0
    runs: int = 0

    @property
    def deferred(self) -> int:
        """Unfinished artifacts held by neither a queue nor a worker (see the module)."""
        return max(0, self.scheduled - self.queued - self.in_flight)

    @property
    def backlog_total(self) -> int:
        """``queued + in_flight + deferred``: what KEDA scales on; 0 only when all is done."""
        return self.queued + self.in_flight + self.deferred


class FleetReader:
    """Reads :class:`FleetGauges` from the state Redis and the broker.

    Parameters:
        records: the records (the state Redis).
        broker: a client of the broker's Redis (the same server, often).
        node_queues: node names (``hoist worker --node-queue``) whose upload
            queues are counted as queued; the others' artifacts count as deferred.
        runs: how many recent runs to count artifacts of (:data:`RECENT_RUNS`).
        per_run: most artifacts read of each (:data:`PER_RUN`).

    Example:
        >>> FleetReader(records, broker).read().backlog_total  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        records: Records,
        broker: redis.Redis,
        node_queues: Iterable[str] = (),
        runs: int = RECENT_RUNS,
        per_run: int = PER_RUN,
    ) -> None:
        self.records = records
        self.broker = broker
        self.queues = [UPLOAD_QUEUE, POINTER_QUEUE, *(node_queue(n) for n in node_queues)]
        self.runs = runs
        self.per_run = per_run
        self.throttle = Throttle(records.client)

    def read(self, now: float | None = None) -> FleetGauges:
        """Read every figure now.

        Raises:
            redis.RedisError: the broker or the state Redis does not answer.
        """
        now = time.time() if now is None else now
        pipe = self.broker.pipeline(transaction=False)
        for queue in self.queues:
            pipe.llen(queue)
        pipe.hlen(UNACKED)
        *lengths, unacked = pipe.execute()
        scheduled = int(self.records.client.zcard(DEFERRED))
        artifacts, oldest, runs = self._recent(now)
        return FleetGauges(
            queued=sum(int(n) for n in lengths),
            in_flight=int(unacked),
            scheduled=scheduled,
            ceilings=self.throttle.ceilings(),
            artifacts=artifacts,
            oldest_pending=oldest,
            runs=runs,
        )

    def _recent(self, now: float) -> tuple[dict[State, int], float, int]:
        """Artifacts per state, and the oldest unfinished one's age, over the recent runs."""
        counts = dict.fromkeys(State, 0)
        oldest: float | None = None
        names = self.records.runs(self.runs) if self.runs > 0 else []
        for run in names:
            logged = cast(
                list[tuple[str, float]],
                self.records.client.zrevrange(run_key(run), 0, self.per_run - 1, withscores=True),
            )
            if not logged:
                continue
            states = self.records.states([artifact for artifact, _ in logged])
            for artifact, at in logged:
                state = states.get(artifact)
                if state is None:
                    continue  # its record expired or was removed
                counts[state] += 1
                if not state.terminal and (oldest is None or at < oldest):
                    oldest = at
        return counts, (max(0.0, now - oldest) if oldest is not None else 0.0), len(names)
