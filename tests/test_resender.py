"""The resender's decisions: what it sends again, and when.

A real Redis (a database of its own, emptied for each test: the deferred
schedule is one key for the whole fleet) and, for the last tests, a real
Celery app sending to it; no worker processes. The clock is the test's: it
starts at the real time (records carry real timestamps) and moves on demand.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from hoist.protocol.messages import (
    UPLOAD_QUEUE,
    UPLOAD_TASK,
    Message,
    UploadRequest,
    artifact_id,
    order_key,
)
from hoist.protocol.sending import send, sender
from hoist.state.keys import DEFERRED
from hoist.state.records import Records
from hoist.state.states import State
from hoist.stores.allowed import AllowedStores
from hoist.tasks.resender import Resender
from hoist.tasks.worker_context import WorkerContext
from tests.services.redis import RedisServer

TIMEOUT = 300.0
"""The resender's queued_timeout in these tests."""

_DATABASE = 11
"""This module's own Redis database (other tests use 0 and 1)."""


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """A send function that keeps what it was given."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []

    def __call__(self, task: str, message: Message) -> None:
        self.sent.append((task, message))

    @property
    def ids(self) -> list[str]:
        return [message.id for _, message in self.sent]


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    return redis_server.url.rsplit("/", 1)[0] + f"/{_DATABASE}"


@pytest.fixture
def records(url: str) -> Iterator[Records]:
    records = Records.from_url(url)
    records.client.flushdb()
    yield records
    records.client.flushdb()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def resender(records: Records, recorder: Recorder, clock: Clock) -> Resender:
    return Resender(records, recorder, TIMEOUT, clock=clock)


def logged(records: Records, seq: int = 1, queue: str = "") -> UploadRequest:
    """An artifact as a rank logs it: recorded, watched, never claimed."""
    run = f"resend-{uuid.uuid4().hex[:8]}"
    message = UploadRequest(
        id=artifact_id(run, 0, seq), run_name=run, rank=0, seq=seq,
        artifact_name=f"a{seq}.bin", object_name=f"{run}/a{seq}.bin",
        order=order_key(0, seq), store={}, staged_path=f"{run}/a{seq}.bin", size=1,
        queue=queue,
    )  # fmt: skip
    records.create(message, UPLOAD_TASK, "store-1")
    return message


def due_at(records: Records, artifact: str) -> float | None:
    score = records.client.zscore(DEFERRED, artifact)
    return None if score is None else score / 1000


def test_nothing_is_sent_before_it_falls_due(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    logged(records)
    assert resender.send_due() == 0  # its first look is 5 s away
    assert recorder.sent == []


def test_a_retrying_artifact_is_sent_again_when_due_as_the_message_it_holds(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    message = logged(records)
    assert records.claim(message, UPLOAD_TASK, "token", max_deliveries=3).value == "claimed"
    records.settle(message.id, "token", State.RETRYING, retry_in=4.0, error="flaky")
    clock.advance(3.0)
    assert resender.send_due() == 0
    clock.advance(2.0)
    assert resender.send_due() == 1
    assert recorder.sent == [(UPLOAD_TASK, message)]
    # Taken: pushed past the guard, so a resender dying now loses nothing.
    guard = due_at(records, message.id)
    assert guard is not None and clock.now + 29 < guard <= clock.now + 30
    assert resender.send_due() == 0  # and sent once per due time


def test_a_claimed_artifact_whose_owner_stopped_renewing_is_sent_again(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    message = logged(records)
    records.claim(message, UPLOAD_TASK, "token", max_deliveries=3)
    clock.advance(2 * records.lease_ms / 1000 - 1)  # two lease times: the owner may be alive
    assert resender.send_due() == 0
    clock.advance(2)  # no heartbeat pushed it on: the owner is lost
    assert resender.send_due() == 1
    assert recorder.ids == [message.id]


@pytest.mark.parametrize("state", [State.DONE, State.FAILED, State.SUPERSEDED])
def test_a_finished_artifact_leaves_the_schedule_unsent(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock, state: State
) -> None:
    message = logged(records)
    records.claim(message, UPLOAD_TASK, "token", max_deliveries=3)
    records.settle(message.id, "token", state, retry_in=0.0)  # due at once, but finished
    clock.advance(1)
    assert resender.send_due() == 1
    assert recorder.sent == []
    assert due_at(records, message.id) is None


def test_an_entry_without_a_record_leaves_the_schedule(
    records: Records, resender: Resender, recorder: Recorder
) -> None:
    records.client.zadd(DEFERRED, {"hoist-gone-r0-1": 1})
    assert resender.send_due() == 1
    assert recorder.sent == []
    assert due_at(records, "hoist-gone-r0-1") is None


def test_a_queued_artifact_is_looked_at_again_at_its_timeout_not_sent(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    message = logged(records)
    status = records.get(message.id)
    assert status is not None
    enqueued = float(status.fields["enqueued_at"])
    clock.advance(6.0)  # the first look
    assert resender.send_due() == 1
    assert recorder.sent == []
    assert due_at(records, message.id) == pytest.approx(enqueued + TIMEOUT, abs=0.001)
    assert "resent_at" not in status.fields


def test_a_queued_artifact_past_its_timeout_is_sent_again_once_per_period(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    message = logged(records)
    clock.advance(TIMEOUT + 1)
    assert resender.send_due() == 1
    assert recorder.ids == [message.id]
    status = records.get(message.id)
    assert status is not None and float(status.fields["resent_at"]) == clock.now
    assert due_at(records, message.id) == pytest.approx(clock.now + TIMEOUT, abs=0.001)

    clock.advance(TIMEOUT - 1)  # measured from the resend, not from logging
    assert resender.send_due() == 0
    clock.advance(2)
    assert resender.send_due() == 1
    assert recorder.ids == [message.id, message.id]


def test_a_queued_artifact_claimed_meanwhile_keeps_its_claims_due_time(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    message = logged(records)
    clock.advance(TIMEOUT + 1)
    [taken] = records.take_due(now=clock.now)  # taken by this resender...
    records.claim(message, UPLOAD_TASK, "token", max_deliveries=3)  # ...and claimed meanwhile
    watchdog = due_at(records, message.id)
    status = records.get(message.id)
    assert status is not None and status.state is State.UPLOADING
    records.recheck_queued(taken, clock.now + TIMEOUT)  # the look-again is refused
    assert due_at(records, message.id) == watchdog
    assert recorder.sent == []


def test_many_due_entries_are_sent_in_one_pass_earliest_first(
    records: Records, resender: Resender, recorder: Recorder, clock: Clock
) -> None:
    messages = [logged(records, seq) for seq in range(1, 4)]
    for offset, message in enumerate(reversed(messages)):
        records.client.zadd(DEFERRED, {message.id: int((clock.now - 10 + offset) * 1000)})
        records.client.hset(f"hoist:artifact:{message.id}", "state", State.WAITING.value)
    assert resender.send_due() == 3
    assert recorder.ids == [message.id for message in reversed(messages)]


# ----- through a real Celery app -------------------------------------------------------


def broker_ids(records: Records, queue: str) -> list[str]:
    """The task ids waiting in ``queue`` of the broker (kombu's Redis list)."""
    ids = []
    for raw in records.client.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        ids.append(envelope["headers"]["id"])
        body = json.loads(base64.b64decode(envelope["body"]))
        assert body[1]["message"]["id"] == envelope["headers"]["id"]
    return ids


def test_the_worker_resender_sends_to_the_broker_and_the_node_queue(
    records: Records, url: str, clock: Clock
) -> None:
    context = cast(
        WorkerContext,
        SimpleNamespace(
            records=records,
            settings=SimpleNamespace(
                queued_timeout=TIMEOUT, broker_url=url, state_url=url, allowed=AllowedStores()
            ),
            store=None,  # no store clients: this resender finishes no prunes
        ),
    )
    resender = Resender.for_worker(context, sender(url))
    assert resender.broker is None  # one plain Redis: no broker group of its own to watch
    resender.clock = clock
    plain = logged(records, 1)
    on_node = logged(records, 2, queue="hoist.uploads.node-7")
    clock.advance(TIMEOUT + 1)
    assert resender.send_due() == 2
    assert broker_ids(records, UPLOAD_QUEUE) == [plain.id]
    assert broker_ids(records, "hoist.uploads.node-7") == [on_node.id]


def test_a_send_that_fails_leaves_the_entry_to_fall_due_again(
    records: Records, url: str, clock: Clock
) -> None:
    message = logged(records)
    app = sender(url)
    calls: list[str] = []

    def flaky(task: str, sent: Message) -> None:
        calls.append(sent.id)
        if len(calls) == 1:
            raise ConnectionError("broker away")
        send(app, task, sent)

    resender = Resender(records, flaky, TIMEOUT, clock=clock)
    records.client.hset(f"hoist:artifact:{message.id}", "state", State.RETRYING.value)
    records.client.zadd(DEFERRED, {message.id: int(clock.now * 1000)})
    with pytest.raises(ConnectionError):
        resender.send_due()
    assert broker_ids(records, UPLOAD_QUEUE) == []
    clock.advance(29)
    assert resender.send_due() == 0
    clock.advance(2)  # the guard ran out: taken again
    assert resender.send_due() == 1
    assert broker_ids(records, UPLOAD_QUEUE) == [message.id]
