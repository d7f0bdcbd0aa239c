"""Each Lua script of hoist.state.scripts, driven directly against a real redis-server.

Every branch of every script, with its KEYS and ARGV as its header lists
them. Keys are this test's own (a fresh prefix each), so nothing here touches
another test's records.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from hoist.state.counters import BUCKETS, FleetCounters, Outcome
from hoist.state.scripts import NAMES, register, source
from hoist.state.states import TERMINAL_STATES, State
from tests.services.redis import RedisServer

NOW_MS = 1_800_000_000_000
"""A fixed "now" (2027), far from any real due time."""


class Keys:
    """Fresh key names for one test."""

    def __init__(self) -> None:
        self.prefix = f"test-scripts:{uuid.uuid4().hex}:"

    def __getattr__(self, name: str) -> str:
        return self.prefix + name


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def keys(client: redis.Redis) -> Iterator[Keys]:
    made = Keys()
    yield made
    stale = list(client.scan_iter(match=made.prefix + "*"))
    if stale:
        client.delete(*stale)


@pytest.fixture
def script(client: redis.Redis) -> Callable[[str], Any]:
    return lambda name: register(client, name)


def pairs(fields: dict[str, Any]) -> list[Any]:
    return [part for pair in fields.items() for part in pair]


# ----- the files themselves ---------------------------------------------------


def test_every_script_has_a_header_naming_what_it_reads_and_returns() -> None:
    for name in NAMES:
        text = source(name)
        assert f"-- {name}:" in text, name
        assert "Returns" in text, name
        # Every KEYS[i] and ARGV[i] the code reads is in the header, alone or in a range.
        header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
        code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
        for kind, index in set(re.findall(r"(KEYS|ARGV)\[(\d+)\]", code)):
            ranges = [int(start) for start in re.findall(rf"{kind}\[(\d+)\.\.", header)]
            listed = f"{kind}[{index}]" in header or any(s <= int(index) for s in ranges)
            assert listed, f"{name}.lua reads {kind}[{index}] and its header does not say what"


def test_the_states_the_scripts_write_are_states_and_terminal_ones_come_from_python() -> None:
    names = {state.value for state in State}
    for name in NAMES:
        code = "\n".join(line for line in source(name).splitlines() if not line.startswith("--"))
        for written in re.findall(r"'state', '(\w+)'", code):
            assert written in names, f"{name}.lua writes an unknown state {written!r}"
    claim = source("claim")
    for state in TERMINAL_STATES:
        assert f"['{state.value}'] = true" in claim
    assert "'done'" not in claim.split("\n", 1)[1]  # only the loader's table names them


def test_an_unknown_script_is_refused() -> None:
    with pytest.raises(KeyError, match="no state script named 'nope'"):
        source("nope")


# ----- claim --------------------------------------------------------------------


def initial(message: str = '{"id": "a"}', task: str = "hoist.upload") -> dict[Any, Any]:
    return {
        "state": "queued",
        "message": message,
        "task": task,
        "run": "run",
        "rank": 0,
        "enqueued_at": 1800000000.0,
        "attempts": 0,
        "deliveries": 0,
    }


def claim(
    script: Callable[[str], Any],
    keys: Keys,
    max_deliveries: int = 3,
    fields: dict[str, Any] | None = None,
    reads: tuple[str, ...] = (),
) -> Any:
    args = [
        "token-1", 30_000, max_deliveries, NOW_MS / 1000, NOW_MS + 60_000, "a",
        *pairs({**initial(), **(fields or {})}),
    ]  # fmt: skip
    result = script("claim")(keys=[keys.record, keys.owner, keys.deferred, *reads], args=args)
    return result if reads else str(result)


def test_a_claim_reads_the_marker_it_is_given_only_when_it_claims(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    assert claim(script, keys, reads=(keys.latest,)) == ["claimed", None]  # unset
    client.delete(keys.owner)
    client.set(keys.latest, "0002|b")
    assert claim(script, keys, reads=(keys.latest,)) == ["claimed", "0002|b"]
    assert claim(script, keys, reads=(keys.latest,)) == "busy"  # no claim: nothing read


def test_claim_creates_a_missing_record_from_the_initial_fields_and_claims_it(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    assert claim(script, keys) == "claimed"
    record = client.hgetall(keys.record)
    assert record == {
        **{name: str(value) for name, value in initial().items()},
        "state": "uploading",
        "started_at": str(NOW_MS / 1000),
        "deliveries": "1",
    }
    assert client.get(keys.owner) == "token-1"
    assert 29_000 < client.pttl(keys.owner) <= 30_000
    assert client.zscore(keys.deferred, "a") == NOW_MS + 60_000


def test_claim_of_a_queued_record_counts_a_delivery(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "deliveries": 2, "attempts": 1})
    assert claim(script, keys) == "claimed"
    assert client.hget(keys.record, "deliveries") == "3"
    assert client.hget(keys.record, "attempts") == "1"  # a delivery is not an attempt


@pytest.mark.parametrize("field", ["message", "task"])
def test_claim_of_another_message_under_the_id_is_a_mismatch_and_touches_nothing(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], field: str
) -> None:
    client.hset(keys.record, mapping=initial())
    before = client.hgetall(keys.record)
    assert claim(script, keys, fields={field: "forged"}) == "mismatch"
    assert client.hgetall(keys.record) == before
    assert not client.exists(keys.owner)
    assert not client.exists(keys.deferred)


@pytest.mark.parametrize("state", [state.value for state in TERMINAL_STATES])
def test_claim_of_a_finished_record_is_finished_and_touches_nothing(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], state: str
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": state})
    before = client.hgetall(keys.record)
    assert claim(script, keys) == "finished"
    assert client.hgetall(keys.record) == before
    assert not client.exists(keys.owner)


@pytest.mark.parametrize("state", ["waiting", "retrying", "uploading"])
def test_claim_of_an_unfinished_record_without_an_owner_claims_it(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], state: str
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": state})
    assert claim(script, keys) == "claimed"
    assert client.hget(keys.record, "state") == "uploading"


def test_claim_while_another_owner_lives_is_busy_and_touches_nothing(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "uploading", "deliveries": 1})
    client.set(keys.owner, "token-0", px=30_000)
    before = client.hgetall(keys.record)
    assert claim(script, keys) == "busy"
    assert client.hgetall(keys.record) == before
    assert client.get(keys.owner) == "token-0"


def test_claim_past_max_deliveries_is_poison_fails_the_record_and_unschedules_it(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "uploading", "deliveries": 3})
    client.zadd(keys.deferred, {"a": 1, "other": 2})
    assert claim(script, keys, max_deliveries=3) == "poison"
    record = client.hgetall(keys.record)
    assert record["state"] == "failed"
    assert record["finished_at"] == str(NOW_MS / 1000)
    assert record["deliveries"] == "4"
    assert record["error"] == (
        "the worker was lost 3 times while handling this artifact (killed, out of memory?); "
        "see the workers' logs, then `hoist retry`"
    )
    assert client.zrange(keys.deferred, 0, -1) == ["other"]
    assert not client.exists(keys.owner)


def test_claim_at_exactly_max_deliveries_still_claims(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "deliveries": 2})
    assert claim(script, keys, max_deliveries=3) == "claimed"


# ----- renew_claim --------------------------------------------------------------


def test_renew_by_the_owner_extends_the_lease_and_pushes_the_watchdog(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.set(keys.owner, "token-1", px=1_000)
    client.zadd(keys.deferred, {"a": 5})
    args = ["token-1", 30_000, NOW_MS + 60_000, "a"]
    assert script("renew_claim")(keys=[keys.owner, keys.deferred], args=args) == 1
    assert 29_000 < client.pttl(keys.owner) <= 30_000
    assert client.zscore(keys.deferred, "a") == NOW_MS + 60_000


def test_renew_does_not_put_back_an_artifact_that_left_the_schedule(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.set(keys.owner, "token-1", px=1_000)
    args = ["token-1", 30_000, NOW_MS + 60_000, "a"]
    assert script("renew_claim")(keys=[keys.owner, keys.deferred], args=args) == 1
    assert not client.exists(keys.deferred)


@pytest.mark.parametrize("owner", [None, "token-0"])
def test_renew_by_a_token_that_lost_the_claim_changes_nothing(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], owner: str | None
) -> None:
    if owner:
        client.set(keys.owner, owner, px=1_000)
    client.zadd(keys.deferred, {"a": 5})
    args = ["token-1", 30_000, NOW_MS + 60_000, "a"]
    assert script("renew_claim")(keys=[keys.owner, keys.deferred], args=args) == 0
    assert client.zscore(keys.deferred, "a") == 5
    if owner:
        assert client.pttl(keys.owner) <= 1_000


# ----- settle -------------------------------------------------------------------


def settle(
    script: Callable[[str], Any],
    keys: Keys,
    due: str,
    keep: str,
    token: str = "token-1",
    count: Sequence[str | int] = (),
    **fields: Any,
) -> int:
    return int(
        script("settle")(
            keys=[
                keys.record,
                keys.owner,
                keys.deferred,
                keys.counters,
                keys.lease_a,
                keys.lease_b,
            ],
            args=[token, "a", due, keep, len(count), *count, *pairs(fields)],
        )
    )


def test_settle_finished_releases_everything_unschedules_and_expires(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "uploading", "deliveries": 2})
    client.set(keys.owner, "token-1")
    client.zadd(keys.lease_a, {"token-1": 1, "token-0": 1})
    client.zadd(keys.lease_b, {"token-1": 1})
    client.zadd(keys.deferred, {"a": 5, "other": 6})
    assert settle(script, keys, "", "120", state="done", result='{"size": 1}') == 1
    record = client.hgetall(keys.record)
    assert (record["state"], record["result"], record["deliveries"]) == ("done", '{"size": 1}', "0")
    assert 110 < client.ttl(keys.record) <= 120
    assert not client.exists(keys.owner)
    assert client.zrange(keys.lease_a, 0, -1) == ["token-0"]
    assert not client.exists(keys.lease_b)
    assert client.zrange(keys.deferred, 0, -1) == ["other"]


def test_settle_with_a_due_time_reschedules_and_keeps_the_record(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "uploading"})
    client.set(keys.owner, "token-1")
    assert settle(script, keys, str(NOW_MS + 4_000), "", state="retrying", error="flaky") == 1
    assert client.zscore(keys.deferred, "a") == NOW_MS + 4_000
    assert client.ttl(keys.record) == -1
    assert client.hget(keys.record, "state") == "retrying"
    assert not client.exists(keys.owner)


def test_settle_by_a_token_that_lost_the_claim_leaves_the_new_owner(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "uploading"})
    client.set(keys.owner, "token-2")
    assert settle(script, keys, "", "", state="waiting") == 1
    assert client.get(keys.owner) == "token-2"
    assert client.hget(keys.record, "state") == "waiting"


def test_settle_counts_the_outcome_with_the_record_it_writes(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    """The counts read the record as this settle leaves it, and the fields after the
    counted arguments are still the record's."""
    client.hset(keys.record, mapping={**initial(), "state": "uploading", "enqueued_at": 1000})
    outcome = Outcome("ab12", attempted=True, uploaded_bytes=64, verified=True)
    count = FleetCounters.arguments(outcome, 1003.0)
    assert settle(script, keys, "", "120", count=count, state="done", size=64) == 1
    assert client.hget(keys.record, "size") == "64"
    assert client.hgetall(keys.counters) == {
        "attempts|ab12": "1",
        "bytes|ab12": "64",
        **{f"verified_bucket|ab12|{b:g}": "1" for b in BUCKETS if b >= 3},
        "verified_bucket|ab12|+Inf": "1",
        "verified_sum|ab12": "3",
    }
    assert settle(script, keys, "", "120", state="done") == 1  # nothing counted: unchanged
    assert client.hget(keys.counters, "attempts|ab12") == "1"


# ----- raise_marker -------------------------------------------------------------


def test_a_marker_only_rises(client: redis.Redis, keys: Keys, script: Callable[[str], Any]) -> None:
    raise_marker = script("raise_marker")
    assert raise_marker(keys=[keys.marker], args=["0002|b", 100]) == 1  # absent: set
    assert 90 < client.ttl(keys.marker) <= 100
    assert raise_marker(keys=[keys.marker], args=["0001|a", 500]) == 0  # lower: kept
    assert raise_marker(keys=[keys.marker], args=["0002|b", 500]) == 0  # equal: kept
    assert client.get(keys.marker) == "0002|b"
    assert client.ttl(keys.marker) <= 100  # nor its expiry refreshed
    assert raise_marker(keys=[keys.marker], args=["0003|c", 500]) == 1  # higher: raised
    assert client.get(keys.marker) == "0003|c"
    assert 490 < client.ttl(keys.marker) <= 500


# ----- recheck_queued and fail_queued ---------------------------------------------


@pytest.mark.parametrize(("state", "rescheduled"), [("queued", 1), ("uploading", 0), (None, 0)])
def test_recheck_reschedules_only_a_queued_record(
    client: redis.Redis,
    keys: Keys,
    script: Callable[[str], Any],
    state: str | None,
    rescheduled: int,
) -> None:
    if state:
        client.hset(keys.record, mapping={**initial(), "state": state})
    client.zadd(keys.deferred, {"a": 5})
    args = [NOW_MS + 300_000, "a"]
    assert script("recheck_queued")(keys=[keys.record, keys.deferred], args=args) == rescheduled
    assert client.zscore(keys.deferred, "a") == (NOW_MS + 300_000 if rescheduled else 5)


@pytest.mark.parametrize(("state", "failed"), [("queued", 1), ("uploading", 0), (None, 0)])
def test_fail_queued_fails_only_a_queued_record(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], state: str | None, failed: int
) -> None:
    if state:
        client.hset(keys.record, mapping={**initial(), "state": state})
    before = client.hgetall(keys.record)
    assert script("fail_queued")(keys=[keys.record], args=[1234.5, "no broker"]) == failed
    if failed:
        record = client.hgetall(keys.record)
        assert (record["state"], record["finished_at"], record["error"]) == (
            "failed",
            "1234.5",
            "no broker",
        )
    else:
        assert client.hgetall(keys.record) == before


# ----- reset_failed ---------------------------------------------------------------


def test_reset_makes_a_failed_record_queued_with_nothing_counted(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(
        keys.record,
        mapping={**initial(), "state": "failed", "attempts": 3, "deliveries": 2,
                 "error": "denied", "finished_at": 99.0},
    )  # fmt: skip
    client.expire(keys.record, 100)
    assert script("reset_failed")(keys=[keys.record], args=[1234.5]) == 1
    record = client.hgetall(keys.record)
    assert record["state"] == "queued"
    assert (record["attempts"], record["deliveries"], record["error"]) == ("0", "0", "")
    assert record["retried_at"] == "1234.5"
    assert "finished_at" not in record
    assert client.ttl(keys.record) == -1


@pytest.mark.parametrize("state", ["queued", "uploading", "done", None])
def test_reset_of_a_record_that_is_not_failed_changes_nothing(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], state: str | None
) -> None:
    if state:
        client.hset(keys.record, mapping={**initial(), "state": state})
    before = client.hgetall(keys.record)
    assert script("reset_failed")(keys=[keys.record], args=[1234.5]) == 0
    assert client.hgetall(keys.record) == before


# ----- register_shards --------------------------------------------------------------


def test_register_counts_ranks_and_refuses_another_world_size(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    register_shards = script("register_shards")
    assert register_shards(keys=[keys.ckpt], args=[0, '["a"]', 2, 100]) == 1
    assert 90 < client.ttl(keys.ckpt) <= 100
    assert register_shards(keys=[keys.ckpt], args=[0, '["a2"]', 2, 100]) == 1  # again: replaced
    assert register_shards(keys=[keys.ckpt], args=[1, '["b"]', 2, 200]) == 2
    assert 190 < client.ttl(keys.ckpt) <= 200
    before = client.hgetall(keys.ckpt)
    assert before == {"world_size": "2", "rank:0": '["a2"]', "rank:1": '["b"]'}
    assert register_shards(keys=[keys.ckpt], args=[2, '["c"]', 3, 300]) == -1
    assert client.hgetall(keys.ckpt) == before
    assert client.ttl(keys.ckpt) <= 200


# ----- create -----------------------------------------------------------------------


def create(
    script: Callable[[str], Any],
    keys: Keys,
    *,
    once: bool = False,
    marker: str | None = "0002|a",
    now: float = NOW_MS / 1000,
    **fields: Any,
) -> int:
    key_list = [keys.record, keys.run, keys.runs, keys.deferred, keys.failures]
    if marker is not None:
        key_list.append(keys.latest)
    args = [
        "a", "run", now, NOW_MS + 5_000, 100, "1" if once else "", marker or "",
        *pairs({**initial(), **fields}),
    ]  # fmt: skip
    created, _failures = script("create")(keys=key_list, args=args)
    return int(created)


def test_create_writes_indexes_watches_and_raises_the_latest_marker(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(keys.runs, {"ancient": NOW_MS / 1000 - 101, "recent": NOW_MS / 1000 - 99})
    assert create(script, keys) == 1
    assert client.hgetall(keys.record) == {name: str(value) for name, value in initial().items()}
    assert client.ttl(keys.record) == -1
    assert client.zscore(keys.run, "a") == NOW_MS / 1000
    assert 90 < client.ttl(keys.run) <= 100
    assert client.zrange(keys.runs, 0, -1) == ["recent", "run"]  # idle past the retention: gone
    assert client.zscore(keys.deferred, "a") == NOW_MS + 5_000
    assert client.get(keys.latest) == "0002|a"
    assert 90 < client.ttl(keys.latest) <= 100


def test_create_returns_the_ranks_failure_counter_as_it_stands(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    """Read in the round trip that writes the record (hoist.logger.health), never written."""
    arguments = [NOW_MS + 5_000, 100, "", ""]
    call = script("create")
    key_list = [keys.record, keys.run, keys.runs, keys.deferred, keys.failures]
    base = ["a", "run", NOW_MS / 1000, *arguments, *pairs(initial())]
    assert call(keys=key_list, args=base) == [1, 0]
    client.set(keys.failures, 3)
    assert call(keys=key_list, args=base) == [1, 3]
    assert client.get(keys.failures) == "3"


def test_create_keeps_a_due_time_already_set_and_a_later_marker(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(keys.deferred, {"a": 7})
    client.set(keys.latest, "0009|z")
    assert create(script, keys) == 1
    assert client.zscore(keys.deferred, "a") == 7
    assert client.get(keys.latest) == "0009|z"


def test_create_without_a_marker_key_writes_no_marker(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    assert create(script, keys, marker=None) == 1
    assert client.exists(keys.record)
    assert not client.exists(keys.latest)


def test_create_always_overwrites_the_fields_it_is_given(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "done", "extra": "kept"})
    assert create(script, keys) == 1
    assert client.hget(keys.record, "state") == "queued"
    assert client.hget(keys.record, "extra") == "kept"


@pytest.mark.parametrize("state", ["queued", "uploading", "done"])
def test_create_once_leaves_a_pending_or_done_record_alone(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any], state: str
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": state})
    before = client.hgetall(keys.record)
    assert create(script, keys, once=True, marker=None) == 0
    assert client.hgetall(keys.record) == before
    assert not client.exists(keys.run)
    assert not client.exists(keys.deferred)


def test_create_once_replaces_a_failed_record_whole(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.record, mapping={**initial(), "state": "failed", "error": "old"})
    assert create(script, keys, once=True, marker=None) == 1
    assert client.hgetall(keys.record) == {name: str(value) for name, value in initial().items()}


def test_create_once_of_a_new_record_creates_it(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    assert create(script, keys, once=True, marker=None) == 1
    assert client.hget(keys.record, "state") == "queued"


# ----- take_due and states -----------------------------------------------------------


def test_take_due_takes_the_earliest_due_entries_and_guards_them(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(
        keys.deferred, {"late": NOW_MS + 1, "b": NOW_MS - 10, "a": NOW_MS - 20, "c": NOW_MS}
    )
    take_due = script("take_due")
    guard = NOW_MS + 30_000
    assert take_due(keys=[keys.deferred], args=[NOW_MS, 2, guard]) == ["a", "b"]
    assert client.zscore(keys.deferred, "a") == client.zscore(keys.deferred, "b") == guard
    assert take_due(keys=[keys.deferred], args=[NOW_MS, 10, guard]) == ["c"]  # due at "now" too
    assert client.zscore(keys.deferred, "late") == NOW_MS + 1
    assert take_due(keys=[keys.deferred], args=[NOW_MS, 10, guard]) == []


def test_states_answers_each_record_in_order(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.hset(keys.one, "state", "done")
    client.hset(keys.three, "state", "queued")
    assert script("states")(keys=[keys.one, keys.two, keys.three]) == ["done", None, "queued"]


# ----- acquire_leases and renew_lease -----------------------------------------------


def acquire(script: Callable[[str], Any], keys: list[str], sizes: list[int], token: str) -> int:
    """Take the leases ``keys``; their ceilings (tests/test_throttle.py) never exist here."""
    args = [token, NOW_MS, NOW_MS + 30_000, 60_000, *sizes]
    ceilings = [f"{key}:no-ceiling" for key in keys]
    return int(script("acquire_leases")(keys=[*keys, *ceilings], args=args))


def test_leases_are_taken_all_or_none(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    assert acquire(script, [keys.rank, keys.store], [1, 2], "t1") == 1
    assert client.zscore(keys.rank, "t1") == client.zscore(keys.store, "t1") == NOW_MS + 30_000
    assert 59_000 < client.pttl(keys.rank) <= 60_000
    # The store has room, the rank has none: t2 takes neither.
    assert acquire(script, [keys.store, keys.rank], [2, 1], "t2") == 0
    assert client.zrange(keys.store, 0, -1) == ["t1"]
    assert client.zrange(keys.rank, 0, -1) == ["t1"]


def test_a_holder_takes_its_own_lease_again_even_when_full(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(keys.rank, {"t1": NOW_MS + 1_000})
    assert acquire(script, [keys.rank], [1], "t1") == 1
    assert client.zscore(keys.rank, "t1") == NOW_MS + 30_000


def test_expired_holders_make_room(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(keys.rank, {"dead": NOW_MS, "alive": NOW_MS + 1})
    assert acquire(script, [keys.rank], [2], "t1") == 1
    assert client.zrange(keys.rank, 0, -1) == ["alive", "t1"]


def test_a_full_limit_still_drops_its_expired_holders(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    client.zadd(keys.rank, {"dead": NOW_MS - 1, "alive": NOW_MS + 1})
    assert acquire(script, [keys.rank], [1], "t1") == 0
    assert client.zrange(keys.rank, 0, -1) == ["alive"]


def test_renew_lease_only_for_a_holder(
    client: redis.Redis, keys: Keys, script: Callable[[str], Any]
) -> None:
    renew_lease = script("renew_lease")
    client.zadd(keys.rank, {"t1": NOW_MS})
    client.pexpire(keys.rank, 1_000)
    assert renew_lease(keys=[keys.rank], args=["t1", NOW_MS + 30_000, 60_000]) == 1
    assert client.zscore(keys.rank, "t1") == NOW_MS + 30_000
    assert 59_000 < client.pttl(keys.rank) <= 60_000
    assert renew_lease(keys=[keys.rank], args=["t2", NOW_MS + 30_000, 90_000]) == 0
    assert client.zrange(keys.rank, 0, -1) == ["t1"]
    assert client.pttl(keys.rank) <= 60_000


# ----- through Records: the scripts as hoist calls them ------------------------------


def test_records_claim_writes_the_same_fields_as_create(redis_server: RedisServer) -> None:
    """A record a claim creates holds what the rank's create would have written."""
    from hoist.protocol.messages import UPLOAD_TASK, UploadRequest, artifact_id, order_key
    from hoist.state.records import Records

    run = f"scripts-{uuid.uuid4().hex[:8]}"
    records = Records.from_url(redis_server.url)

    def message(seq: int) -> UploadRequest:
        return UploadRequest(
            id=artifact_id(run, 0, seq), run_name=run, rank=0, seq=seq,
            artifact_name="a.bin", object_name=f"{run}/a.bin", order=order_key(0, seq),
            store={}, staged_path=f"{run}/a.bin", size=1,
        )  # fmt: skip

    created, claimed = message(1), message(2)
    records.create(created, UPLOAD_TASK, "store-1")
    records.claim(claimed, UPLOAD_TASK, "token", max_deliveries=3)
    by_create = records.get(created.id)
    by_claim = records.get(claimed.id)
    assert by_create is not None and by_claim is not None
    assert set(by_claim.fields) == set(by_create.fields) | {"started_at"}
    assert json.loads(by_claim.fields["message"]) == claimed.to_json()
    assert by_claim.fields["run"] == run and by_claim.fields["rank"] == "0"
    records.client.zrem("hoist:deferred", created.id, claimed.id)
