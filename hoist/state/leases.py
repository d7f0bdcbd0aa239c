"""Fleet-wide concurrency limits: leases that expire unless renewed.

A limit is a Redis sorted set whose members are holders' tokens and whose
scores are expiry times. Taking a lease drops expired members, then adds the
token if fewer than ``limit`` remain; a holder renews by pushing its expiry
forward. A worker that dies stops renewing, and its lease frees itself within
one lease time.

One mechanism serves every limit hoist has: uploads per rank
(``num_concurrent_uploads``), uploads per store (set on the workers), one
upload in flight per object name, and one writer per pointer.

Every write also sets the limit key's own time to live to two lease times:
always past every member's expiry, so an idle limit vanishes and a busy one
never does (the scripts ``acquire_leases.lua`` and ``renew_lease.lua``).

A store's limit may be lowered for the whole fleet while the store throttles
(:mod:`hoist.state.throttle`): its ceiling key then caps it, read in the same
round trip that takes the lease.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from hoist.state.keys import name_lease_key, rank_lease_key, store_lease_key, throttle_key
from hoist.state.scripts import register

_NO_CEILING = throttle_key("none")
"""The ceiling of a limit that has none: a key never written (store ids are hex)."""


@dataclass(frozen=True)
class Limit:
    """One fleet-wide limit.

    Parameters:
        key: the Redis key of the limit (see the ``*_limit`` helpers).
        size: how many holders it admits; 0 means no limit.
        ceiling: the key of a ceiling that may lower ``size`` for a while (a
            store's, while it throttles); such a limit is taken even at size
            0, so its holders are counted for the first decrease.
    """

    key: str
    size: int
    ceiling: str = ""


def rank_limit(run_name: str, rank: int, size: int) -> Limit:
    """The limit of one rank's uploads in flight (``num_concurrent_uploads``)."""
    return Limit(rank_lease_key(run_name, rank), size)


def store_limit(store_id: str, size: int) -> Limit:
    """The limit of uploads in flight to one store, fleet-wide, under its throttle ceiling."""
    return Limit(store_lease_key(store_id), size, throttle_key(store_id))


def name_lock(store_id: str, object_name: str) -> Limit:
    """One upload of an object name in flight at a time."""
    return Limit(name_lease_key(store_id, object_name), 1)


class Leases:
    """Takes, renews and returns leases for one holder token.

    Parameters:
        client: a Redis client.
        token: identifies the holder (one task run).
        lease_ms: how long a lease lives without renewal.
    """

    def __init__(self, client: redis.Redis, token: str, lease_ms: int = 30_000) -> None:
        self.client = client
        self.token = token
        self.lease_ms = lease_ms
        self.held: list[Limit] = []
        self.capped = False
        self.store_since_ms: int | None = None
        """When this holder took a store's lease (ms since the epoch), or None: what a
        throttled answer is judged by (:meth:`hoist.state.throttle.Throttle.slowed`)."""
        """Whether the last acquire met a throttle ceiling (the job then reports
        clean answers, :meth:`hoist.state.throttle.Throttle.answered`)."""
        self._acquire_all = register(client, "acquire_leases")
        self._renew = register(client, "renew_lease")

    def acquire_all(self, limits: list[Limit], patience: float = 0.0) -> bool:
        """Take every lease in ``limits``, or none of them.

        Parameters:
            limits: the leases to take; a limit of size 0 or less is no limit.
            patience: seconds to keep trying while a limit is full. A burst of
                small uploads frees a slot within milliseconds, sooner than the
                caller could defer and be sent again.
        """
        wanted = [limit for limit in limits if limit.size > 0 or limit.ceiling]
        if not wanted:
            return True
        keys = [limit.key for limit in wanted] + [limit.ceiling or _NO_CEILING for limit in wanted]
        deadline = time.monotonic() + patience
        delay = 0.005
        while True:
            now = int(time.time() * 1000)
            args: list[str | int] = [self.token, now, now + self.lease_ms, 2 * self.lease_ms]
            args += [limit.size for limit in wanted]
            taken = int(self._acquire_all(keys=keys, args=args))
            if taken:
                self.held.extend(wanted)
                self.capped = taken == 2
                if any(limit.ceiling for limit in wanted):
                    self.store_since_ms = now
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def renew_all(self) -> bool:
        """Push every held lease's expiry forward; False if any was lost."""
        expiry = int(time.time() * 1000) + self.lease_ms
        args: list[str | int] = [self.token, expiry, 2 * self.lease_ms]
        return all(self._renew(keys=[limit.key], args=args) for limit in self.held)

    def forget_all(self) -> list[str]:
        """Stop tracking every held lease and return their keys, for a caller that
        releases them itself (a job's settle does, in the same round trip)."""
        keys = [limit.key for limit in self.held]
        self.held = []
        return keys

    def release_all(self) -> None:
        """Return every held lease now (a task that settles without them)."""
        if self.held:
            pipe = self.client.pipeline()
            for limit in self.held:
                pipe.zrem(limit.key, self.token)
            pipe.execute()
        self.held = []
