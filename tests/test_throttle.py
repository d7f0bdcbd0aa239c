"""Backing off together: a store's fleet-wide ceiling while it throttles, against a real Redis.

The state (:mod:`hoist.state.throttle`) and the worker's decisions
(:func:`hoist.tasks.delivery.deliver`, through the worker core's test world) are
tested here without worker processes; the whole fleet converging under a
throttling server is in tests/test_faults_store.py.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import pytest
import redis

from hoist.errors import StoreThrottledError
from hoist.protocol.messages import UPLOAD_TASK
from hoist.state.keys import throttle_key
from hoist.state.leases import Leases, store_limit
from hoist.state.states import State
from hoist.state.throttle import DECREASE_WINDOW_MS, Throttle
from tests.services.redis import RedisServer
from tests.test_worker_core import World, failing


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def holders(client: redis.Redis, store: str, count: int) -> list[Leases]:
    """``count`` uploads in flight to ``store`` (no configured limit)."""
    held = []
    for n in range(count):
        leases = Leases(client, f"holder-{n}-{uuid.uuid4().hex[:6]}", lease_ms=30_000)
        assert leases.acquire_all([store_limit(store, 0)])
        assert not leases.capped
        held.append(leases)
    return held


def test_a_throttle_halves_what_was_in_flight_once_per_window(client: redis.Redis) -> None:
    store = uuid.uuid4().hex[:16]
    held = holders(client, store, 8)
    throttle = Throttle(client)
    assert throttle.slowed(store, configured=0) == 4.0
    # Every request in flight when the store objected gets the same answer: one decrease.
    assert throttle.slowed(store, configured=0) == 4.0
    newcomer = Leases(client, "newcomer", lease_ms=30_000)
    assert not newcomer.acquire_all([store_limit(store, 0)])  # 8 in flight, ceiling 4
    for leases in held[:5]:
        leases.release_all()
    assert newcomer.acquire_all([store_limit(store, 0)])  # 3 in flight: a place under 4
    assert newcomer.capped  # the job then reports its clean answer
    client.hset(throttle_key(store), "changed", int(time.time() * 1000) - DECREASE_WINDOW_MS)
    assert throttle.slowed(store, configured=0) == 2.0  # a window later, halved again
    (ceiling,) = [c for c in throttle.ceilings() if c.store_id == store]
    assert (ceiling.limit, ceiling.base, ceiling.decreases) == (2.0, 8, 2)


def test_clean_answers_raise_the_ceiling_until_it_is_lifted(client: redis.Redis) -> None:
    store = uuid.uuid4().hex[:16]
    holders(client, store, 2)
    throttle = Throttle(client)
    assert throttle.slowed(store, configured=6) == 1.0  # from the 2 in flight
    seen = []
    while (limit := throttle.answered(store, configured=6)) is not None:
        seen.append(limit)
    # 1/limit a clean answer: one place more per ceiling's worth of answers.
    assert seen[:3] == [2.0, 2.5, 2.9]
    assert seen[-1] < 6 and len(seen) == 16  # the 17th reaches 6 and lifts it
    assert not client.exists(throttle_key(store))  # at the configured limit: lifted
    assert throttle.answered(store, configured=6) is None


def test_without_a_configured_limit_it_is_lifted_at_twice_where_it_began(
    client: redis.Redis,
) -> None:
    store = uuid.uuid4().hex[:16]
    holders(client, store, 4)
    throttle = Throttle(client)
    throttle.slowed(store, configured=0)
    answers = 0
    while throttle.answered(store, configured=0) is not None:
        answers += 1
    assert 20 < answers < 40  # from 2 to 8 at 1/limit an answer
    assert throttle.ceilings() == [] or all(c.store_id != store for c in throttle.ceilings())


def test_a_throttled_upload_lowers_the_ceiling_and_a_clean_one_raises_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    world = World(redis_server.url, tmp_path)
    store = world.spec.store_id
    throttle = Throttle(world.records.client)
    slow = world.upload("slow.bin")
    ctx = dataclasses.replace(
        world.ctx, store=failing(world, StoreThrottledError("503 SlowDown; slow down"))
    )
    assert world.deliver(UPLOAD_TASK, slow, ctx)["outcome"] == State.RETRYING.value
    (ceiling,) = [c for c in throttle.ceilings() if c.store_id == store]
    assert ceiling.limit == 1.0  # the throttled upload was the only one in flight
    # A later upload under the ceiling answers cleanly and raises it.
    clean = world.upload("clean.bin")
    assert world.deliver(UPLOAD_TASK, clean)["outcome"] == State.DONE.value
    assert all(c.store_id != store for c in throttle.ceilings())  # 1 + 1/1 = 2: lifted
