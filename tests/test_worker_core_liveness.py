"""The worker core while an upload is in flight: heartbeat, progress, an attempt's leftover.

In this process, as tests/test_worker_core.py (whose :class:`World` builds
the messages and collaborators): a real ``redis-server``, a real Libcloud
``local`` store, no worker process.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import pytest
import redis

from hoist.errors import ObjectExistsError, TransientStoreError
from hoist.protocol.messages import UPLOAD_TASK
from hoist.state.keys import owner_key
from hoist.state.records import Records
from hoist.state.states import Claim, State
from hoist.tasks.heartbeat import Heartbeat, LeaseLost
from hoist.tasks.job import Job
from hoist.tasks.jobs import JOBS
from hoist.tasks.progress import PROGRESS_EVENT
from tests.services.keys import KEYS
from tests.test_worker_core import World
from tests.test_worker_core import world as world  # the fixture, shared

# ----- the heartbeat ------------------------------------------------------------


def claimed_job(world: World, lease_seconds: float, records: Any = None) -> Job:
    """An upload job that has claimed its record, with leases of ``lease_seconds``."""
    message = world.upload("long.bin")
    ctx = world.with_settings(lease_seconds=lease_seconds)
    claims = Records.from_url(world.settings.state_url, lease_ms=ctx.settings.lease_ms)
    ctx = dataclasses.replace(ctx, records=records or claims)
    job = JOBS[UPLOAD_TASK](ctx, message.to_json(), message.id)
    assert claims.claim(job.message, job.task, job.token, 8) is Claim.CLAIMED
    return job


def test_the_heartbeat_keeps_a_claim_alive_past_its_lease(world: World) -> None:
    job = claimed_job(world, lease_seconds=0.3)
    with Heartbeat(job) as heartbeat:
        time.sleep(1.0)  # over three lease times
        heartbeat.check()
        assert not heartbeat.lost.is_set()
        # Still owned: another delivery finds it busy.
        assert world.records.claim(job.message, job.task, "second:1", 8) is Claim.BUSY


def test_a_heartbeat_that_cannot_renew_stops_the_transfer(world: World) -> None:
    job = claimed_job(world, lease_seconds=0.3)
    with Heartbeat(job) as heartbeat:
        # The claim is gone (expired while Redis was away, taken over).
        world.records.settle(job.message.id, job.token, State.RETRYING, retry_in=60)
        assert heartbeat.lost.wait(1.0)
        with pytest.raises(LeaseLost, match="lost its claim"):
            heartbeat.check(1024)


def test_the_heartbeats_of_a_process_share_one_thread(world: World) -> None:
    """Jobs in flight at once (a threads pool) are renewed by one thread, each on its own
    schedule, and a job that ends is renewed no more."""
    before = {t for t in threading.enumerate() if t.name == "hoist-heartbeat"}
    jobs = [claimed_job(world, lease_seconds=0.3) for _ in range(4)]
    beats = [Heartbeat(job) for job in jobs]
    for beat in beats:
        beat.__enter__()
    try:
        time.sleep(1.0)  # over three lease times for every claim
        for job in jobs:  # each still owned
            assert world.records.claim(job.message, job.task, "second:1", 8) is Claim.BUSY
        threads = {t for t in threading.enumerate() if t.name == "hoist-heartbeat"}
        assert len(threads - before) <= 1 and len(threads) == 1
    finally:
        for beat in beats[1:]:
            beat.__exit__(None, None, None)
    time.sleep(0.5)  # past the lease of every job that ended: nobody renewed them
    assert world.records.claim(jobs[1].message, jobs[1].task, "second:2", 8) is Claim.CLAIMED
    assert world.records.claim(jobs[0].message, jobs[0].task, "second:3", 8) is Claim.BUSY
    beats[0].__exit__(None, None, None)


class RedisAway:
    """Records whose renewals fail as if Redis were unreachable."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.client = records.client
        self.calls = 0

    def renew(self, artifact: str, token: str) -> bool:
        self.calls += 1
        raise redis.ConnectionError("Connection refused")


def test_a_heartbeat_rides_out_redis_for_less_than_a_lease_then_gives_up(world: World) -> None:
    away = RedisAway(world.records)
    job = claimed_job(world, lease_seconds=0.6, records=away)
    with Heartbeat(job) as heartbeat:
        assert not heartbeat.lost.wait(0.3)  # one missed renewal: the lease still holds
        assert away.calls >= 1
        assert heartbeat.lost.wait(1.0)  # missed for a lease time: another may take over
    with pytest.raises(LeaseLost):
        heartbeat.check()


def test_an_upload_that_loses_its_claim_is_sent_again_shortly(world: World) -> None:
    message = world.upload("lost.bin")
    store = world.spec.build(KEYS)

    def lose_the_claim(object_name: str, path: str, **kwargs: Any) -> Any:
        status = world.records.get(message.id)
        assert status is not None and status.state is State.UPLOADING
        world.records.client.delete(owner_key(message.id))  # expired, taken over
        time.sleep(0.25)  # a heartbeat (every lease / 3) finds it gone
        kwargs["progress"](1)  # the store's next chunk: the callback stops the transfer
        raise AssertionError("the transfer went on without its claim")

    store.upload_file = lose_the_claim  # type: ignore[method-assign]
    ctx = dataclasses.replace(world.with_settings(lease_seconds=0.3), store=lambda spec: store)
    result = world.deliver(UPLOAD_TASK, message, ctx)
    assert result["outcome"] == State.RETRYING.value
    assert "lost its claim" in result["error"]
    assert 0 < world.due_in(message) <= world.settings.wait_seconds


# ----- an attempt's own leftover ------------------------------------------------


def test_a_later_attempt_replaces_the_object_an_earlier_attempt_left(world: World) -> None:
    """S3 has no write-then-rename: an attempt that wrote and then failed leaves its
    object under the name; the next attempt of the same artifact replaces it."""
    message = world.upload("model.pt", b"the real bytes")
    store = world.spec.build(KEYS)
    upload_file = store.upload_file

    def write_then_fail(object_name: str, path: str, **kwargs: Any) -> Any:
        kwargs["progress"](1)  # bytes started flowing: the record notes the write
        store.put_bytes(object_name, b"a torn copy")
        raise TransientStoreError("connection reset after the write")

    store.upload_file = write_then_fail  # type: ignore[method-assign]
    torn = dataclasses.replace(world.ctx, store=lambda spec: store)
    assert world.deliver(UPLOAD_TASK, message, torn)["outcome"] == State.RETRYING.value
    assert world.fields(message)["write_started"] == "1"
    store.upload_file = upload_file  # type: ignore[method-assign]
    assert world.deliver(UPLOAD_TASK, message, torn)["outcome"] == State.DONE.value
    assert world.held(message.object_name).read_bytes() == b"the real bytes"


def test_without_an_earlier_write_another_object_under_the_name_is_not_replaced(
    world: World,
) -> None:
    message = world.upload("model.pt", b"ours")
    store = world.spec.build(KEYS)
    seen: list[bool] = []
    upload_file = store.upload_file

    def record(object_name: str, path: str, **kwargs: Any) -> Any:
        seen.append(kwargs["replace_own_leftover"])
        return upload_file(object_name, path, **kwargs)

    store.upload_file = record  # type: ignore[method-assign]
    store.put_bytes(message.object_name, b"someone else's")
    ctx = dataclasses.replace(world.ctx, store=lambda spec: store)
    assert world.deliver(UPLOAD_TASK, message, ctx)["outcome"] == State.FAILED.value
    assert seen == [False]
    assert ObjectExistsError.__name__ in world.fields(message)["error"]


# ----- progress -----------------------------------------------------------------


def test_an_upload_in_flight_reports_its_bytes_to_flower(world: World) -> None:
    data = bytes(3 * 1024 * 1024)
    message = world.upload("big.bin", data)
    events: list[tuple[str, dict[str, Any]]] = []
    job = JOBS[UPLOAD_TASK](
        world.with_settings(progress_seconds=0.0),
        message.to_json(),
        message.id,
        lambda kind, **fields: events.append((kind, fields)),
    )
    assert job.run()["outcome"] == State.DONE.value
    assert events and {kind for kind, _ in events} == {PROGRESS_EVENT}
    last = events[-1][1]
    assert (last["bytes_done"], last["bytes_total"]) == (len(data), len(data))
    assert last["result"] == "uploading: 3.0 MiB of 3.0 MiB (100%)"


def test_a_lost_progress_event_does_not_fail_the_upload(world: World) -> None:
    message = world.upload("big.bin", bytes(2 * 1024 * 1024))

    def broken(kind: str, **fields: Any) -> None:
        raise ConnectionError("events channel gone")

    job = JOBS[UPLOAD_TASK](
        world.with_settings(progress_seconds=0.0), message.to_json(), message.id, broken
    )
    assert job.run()["outcome"] == State.DONE.value
