"""Scripts sent together (hoist.state.scripts.run_together, Records.settle's ``then``),
against a Redis of this module's own: its command counts are this module's alone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from hoist.state.records import Records
from hoist.state.scripts import ScriptCall, run_together
from hoist.state.states import State
from tests.conftest import _serve
from tests.services.redis import RedisServer

APPEND = "return redis.call('APPEND', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused: ' .. ARGV[1])"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _serve(RedisServer(tmp_path_factory.mktemp("together-redis")))


@pytest.fixture
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield client
    client.close()


def _stat(client: redis.Redis, command: str) -> int:
    found = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(found.get("calls", 0))


def test_calls_run_in_order_in_one_pipeline_without_asking_which_scripts_exist(
    client: redis.Redis,
) -> None:
    key = f"test-together:{uuid.uuid4().hex}"
    append = client.register_script(APPEND)
    append(keys=[key], args=[""])  # loaded, as a registered script is after its first run
    exists, evalsha = _stat(client, "script|exists"), _stat(client, "evalsha")
    calls = [ScriptCall(append, [key], ["a"]), ScriptCall(append, [key], ["b"])]
    assert run_together(client, calls) == [1, 2]
    assert client.get(key) == "ab"
    # redis-py's scripts in a pipeline would have sent SCRIPT EXISTS first.
    assert _stat(client, "script|exists") == exists
    assert _stat(client, "evalsha") == evalsha + 2
    client.delete(key)


def test_a_script_the_server_lost_is_loaded_and_an_error_is_returned_not_raised(
    client: redis.Redis,
) -> None:
    key = f"test-together:{uuid.uuid4().hex}"
    append, fail = client.register_script(APPEND), client.register_script(FAIL)
    client.script_flush()  # as after a restart or a failover: the server holds no script
    replies = run_together(client, [ScriptCall(append, [key], ["x"]), ScriptCall(fail, [], ["no"])])
    assert replies[0] == 1 and client.get(key) == "x"
    assert isinstance(replies[1], redis.ResponseError) and "refused: no" in str(replies[1])
    client.delete(key)


@pytest.mark.parametrize("state", [State.DONE, State.FAILED])
def test_a_settle_returns_what_went_with_it_and_stands_when_that_failed(
    client: redis.Redis, state: State
) -> None:
    records, artifact = Records(client), f"together-{uuid.uuid4().hex}"
    key = f"test-together:{uuid.uuid4().hex}"
    append, fail = client.register_script(APPEND), client.register_script(FAIL)
    then = [ScriptCall(fail, [], ["counters"]), ScriptCall(append, [key], ["z"])]
    replies = records.settle(artifact, "token", state, then=then, error="why")
    assert isinstance(replies[0], redis.ResponseError) and replies[1] == 1
    status = records.get(artifact)
    assert status is not None and status.state is state and status.error == "why"
    assert client.get(key) == "z"
    client.delete(key)
