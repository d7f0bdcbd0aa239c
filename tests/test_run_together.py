"""Scripts sent together (hoist.state.scripts.run_together), against the suite's real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from hoist.state.scripts import ScriptCall, run_together
from tests.services.redis import RedisServer

APPEND = "return redis.call('APPEND', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused: ' .. ARGV[1])"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
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
