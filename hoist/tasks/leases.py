"""Fleet-wide concurrency limits: leases that expire unless renewed.

A limit is a Redis sorted set whose members are holders' tokens and whose
scores are expiry times. Taking a lease drops expired members, then adds the
token if fewer than ``limit`` remain; a holder renews by pushing its expiry
forward. A worker that dies stops renewing, and its lease frees itself within
one lease time.

One mechanism serves every limit hoist has: uploads per rank
(``num_concurrent_uploads``), uploads per store (set on the workers), one
upload in flight per object name, and one writer per pointer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from hoist.tasks.records import PREFIX

# Every write sets the key's own TTL to two lease times: always past every
# member's expiry, so an idle limit vanishes and a busy one never does.

# KEYS: limit. ARGV: token, limit, now ms, expiry ms, key ttl ms
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZSCORE', KEYS[1], ARGV[1])
   or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""

# KEYS: limit. ARGV: token, expiry ms, key ttl ms
_RENEW = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True)
class Limit:
    """One fleet-wide limit.

    Parameters:
        key: the Redis key of the limit (see the ``*_limit`` helpers).
        size: how many holders it admits; 0 means no limit.
    """

    key: str
    size: int


def rank_limit(run_name: str, rank: int, size: int) -> Limit:
    return Limit(f"{PREFIX}lease:rank:{run_name}:{rank}", size)


def store_limit(store_id: str, size: int) -> Limit:
    return Limit(f"{PREFIX}lease:store:{store_id}", size)


def name_lock(store_id: str, object_name: str) -> Limit:
    return Limit(f"{PREFIX}lease:name:{store_id}:{object_name}", 1)


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
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def acquire_all(self, limits: list[Limit]) -> bool:
        """Take every lease in ``limits``, or none of them."""
        for limit in limits:
            if limit.size <= 0:
                continue
            now = int(time.time() * 1000)
            args: list[str | int] = [
                self.token,
                limit.size,
                now,
                now + self.lease_ms,
                2 * self.lease_ms,
            ]
            if not self._acquire(keys=[limit.key], args=args):
                self.release_all()
                return False
            self.held.append(limit)
        return True

    def renew_all(self) -> bool:
        """Push every held lease's expiry forward; False if any was lost."""
        expiry = int(time.time() * 1000) + self.lease_ms
        args: list[str | int] = [self.token, expiry, 2 * self.lease_ms]
        return all(self._renew(keys=[limit.key], args=args) for limit in self.held)

    def release_all(self) -> None:
        if self.held:
            pipe = self.client.pipeline()
            for limit in self.held:
                pipe.zrem(limit.key, self.token)
            pipe.execute()
        self.held = []
