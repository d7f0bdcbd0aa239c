"""Artifact records in a real Redis: what expires, and when."""

from __future__ import annotations

import pytest
import redis

from hoist.errors import ConfigurationError
from hoist.protocol.messages import UPLOAD_TASK, UploadRequest, artifact_id, order_key
from hoist.settings import RankSettings, retention_seconds
from hoist.state.keys import latest_key
from hoist.state.records import Records
from hoist.state.states import State
from tests.services.redis import RedisServer

DAY = 86400


def request(run: str, seq: int) -> UploadRequest:
    return UploadRequest(
        id=artifact_id(run, 0, seq),
        run_name=run,
        rank=0,
        seq=seq,
        artifact_name=f"a{seq}.bin",
        object_name=f"{run}/a{seq}.bin",
        order=order_key(0, seq),
        store={},
        staged_path=f"{run}/a{seq}.bin",
        size=1,
    )


@pytest.fixture
def records(redis_server: RedisServer) -> Records:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    return Records(client, retention_seconds=retention_seconds(2))


def test_finished_records_and_markers_expire_after_the_retention(records: Records) -> None:
    client = records.client
    message = request("retention", 1)
    records.create(message, UPLOAD_TASK, "store-1")
    record = f"hoist:artifact:{message.id}"
    assert client.ttl(record) == -1  # pending work is never forgotten
    assert 0 < client.ttl("hoist:run:retention") <= 2 * DAY
    assert 0 < client.ttl(latest_key("store-1", message.object_name)) <= 2 * DAY
    assert records.reserve_seqs("retention", 0, 16) == range(1, 17)
    assert records.reserve_seqs("retention", 0, 16) == range(17, 33)
    assert 0 < client.ttl("hoist:seq:retention:0") <= 2 * DAY

    assert records.claim(message, UPLOAD_TASK, "token-1", max_deliveries=3).value == "claimed"
    records.settle(message.id, "token-1", State.RETRYING, retry_in=1.0, error="flaky")
    assert client.ttl(record) == -1  # retrying is not finished

    records.settle(message.id, "token-1", State.FAILED, error="denied")
    assert 2 * DAY - 60 < client.ttl(record) <= 2 * DAY
    assert records.reset_for_retry(message.id)
    assert client.ttl(record) == -1  # queued again: kept until it finishes


def test_old_runs_leave_the_run_list(records: Records) -> None:
    client = records.client
    client.zadd("hoist:runs", {"ancient-run": 1.0})  # last active in 1970
    records.create(request("fresh-run", 1), UPLOAD_TASK, "store-1")
    assert "ancient-run" not in records.runs()
    assert "fresh-run" in records.runs()


def test_retention_must_be_a_number() -> None:
    with pytest.raises(ConfigurationError, match="HOIST_RETENTION_DAYS='two weeks' is not a num"):
        RankSettings.from_environment({"HOIST_RETENTION_DAYS": "two weeks"})
    empty = RankSettings.from_environment({"HOIST_RETENTION_DAYS": ""})
    assert empty.retention_seconds == retention_seconds(0.5 * 28) == 14 * DAY
    assert retention_seconds(0) == 1


def test_the_retention_is_the_records_own_not_the_environment(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records read no environment: the retention is what their creator passed."""
    monkeypatch.setenv("HOIST_RETENTION_DAYS", "1")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert Records(client).retention_seconds == 14 * DAY
    records = Records.from_url(redis_server.url, retention_seconds=3 * DAY)
    assert records.retention_seconds == 3 * DAY
    message = request("retention-param", 1)
    records.create(message, UPLOAD_TASK, "store-1")
    assert 2 * DAY < records.client.ttl("hoist:run:retention-param") <= 3 * DAY
