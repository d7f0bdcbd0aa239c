"""Backing off together: a store that answers "slow down" gets fewer requests from the whole fleet.

When a store throttles (S3 ``SlowDown``, HTTP 429: :class:`~hoist.errors.StoreThrottledError`),
each worker's own backoff is not enough: while one waits, the others keep
the prefix throttled. So the store's fleet-wide limit
(:func:`hoist.state.leases.store_limit`) gets a ceiling in Redis, lowered and
raised as TCP lowers and raises its window (additive increase, multiplicative
decrease):

- a throttled answer halves the ceiling, at most once per
  :data:`DECREASE_WINDOW_MS`, and only for a request whose lease was taken
  after the last decrease (the requests in flight when the store objected
  were that load, however late they answer); the first decrease starts from
  the uploads then in flight. A job without a store lease (a pointer) lowers
  nothing;
- each clean answer while a ceiling holds raises it by ``1/ceiling``, one
  place more per ceiling's worth of clean answers; at the configured limit
  (``HOIST_STORE_LIMIT``), or at twice where throttling began when none is
  configured, the ceiling is lifted;
- a ceiling nobody touches vanishes after :data:`IDLE_MS`.

The ceiling is read in the round trip that takes the lease, so a worker pays
nothing while no store throttles. ``hoist status`` shows ceilings in force.

Example (against a real Redis; tests/test_throttle.py):
    >>> throttle = Throttle(redis_client)  # doctest: +SKIP
    >>> throttle.slowed("3f1c0a9e2b7d4c11", 0, since_ms)  # 8 in flight  # doctest: +SKIP
    4.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from hoist.state.keys import THROTTLED, reply_text, store_lease_key, throttle_key
from hoist.state.scripts import register

DECREASE_WINDOW_MS = 1000
"""No second decrease sooner: long enough for the requests in flight at the first to answer."""
IDLE_MS = 10 * 60 * 1000
"""A ceiling untouched this long is lifted: the store has not been asked for minutes."""


@dataclass(frozen=True)
class Ceiling:
    """A store's lowered limit, as ``hoist status`` shows it.

    Parameters:
        store_id: the store.
        limit: uploads the fleet may have in flight to it now.
        base: uploads in flight when it first throttled.
        decreases: times the store throttled since then.
        changed_at: when the ceiling last went down, seconds since the epoch.
    """

    store_id: str
    limit: float
    base: int
    decreases: int
    changed_at: float


class Throttle:
    """The fleet's ceilings of the stores that throttle.

    Parameters:
        client: the state Redis.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._down = register(client, "throttle_down")
        self._up = register(client, "throttle_up")

    def slowed(self, store_id: str, configured: int, since_ms: int) -> float:
        """The store throttled a request sent under a lease taken at ``since_ms``:
        lower its ceiling; return the ceiling in force.

        A request sent before the last decrease was part of the load that decrease
        answered: it lowers nothing, however late its answer (a large upload's
        parts keep answering for longer than any window).
        """
        now = int(time.time() * 1000)
        keys = [throttle_key(store_id), store_lease_key(store_id), THROTTLED]
        args: list[int | str] = [now, DECREASE_WINDOW_MS, IDLE_MS, configured, since_ms, store_id]
        return float(self._down(keys=keys, args=args))

    def answered(self, store_id: str, configured: int) -> float | None:
        """The store answered cleanly under a ceiling: raise it; None once lifted."""
        keys = [throttle_key(store_id), THROTTLED]
        held = self._up(keys=keys, args=[IDLE_MS, configured, store_id])
        return float(held) if held else None

    def ceilings(self) -> list[Ceiling]:
        """Every ceiling in force, for ``hoist status`` (one set, not a scan of the keyspace)."""
        found = []
        for member in self.client.smembers(THROTTLED):
            store_id = reply_text(member)
            fields = {
                reply_text(k): float(v)
                for k, v in self.client.hgetall(throttle_key(store_id)).items()
            }
            if "limit" not in fields:  # lifted by expiry: its ceiling went idle
                self.client.srem(THROTTLED, store_id)
                continue
            found.append(
                Ceiling(
                    store_id,
                    fields["limit"],
                    int(fields.get("base", 0)),
                    int(fields.get("decreases", 0)),
                    fields.get("changed", 0.0) / 1000,
                )
            )
        return sorted(found, key=lambda c: c.store_id)
