"""Looking for a secret everywhere a run leaves traces."""

from __future__ import annotations

from collections.abc import Iterator

import redis


def redis_values(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key of the database with each value it holds: (key, value) pairs.

    Strings, hash fields and values, list items, set and sorted-set members;
    the key itself is yielded as a value too, so a secret in a key name is found.
    """
    for key in client.scan_iter(count=1000):
        yield key, key
        kind = client.type(key)
        if kind == b"string":
            yield key, client.get(key) or b""
        elif kind == b"hash":
            for pair in client.hgetall(key).items():
                yield from ((key, part) for part in pair)
        elif kind == b"list":
            yield from ((key, item) for item in client.lrange(key, 0, -1))
        elif kind == b"set":
            yield from ((key, member) for member in client.smembers(key))
        elif kind == b"zset":
            yield from ((key, member) for member, _ in client.zrange(key, 0, -1, withscores=True))


def assert_not_in_redis(client: redis.Redis, secret: str) -> int:
    """Fail if ``secret`` is in any key or value; returns how many values were read."""
    needle = secret.encode()
    scanned = 0
    for key, value in redis_values(client):
        scanned += 1
        assert needle not in value, f"the secret is in Redis key {key!r}"
    assert scanned > 0
    return scanned
