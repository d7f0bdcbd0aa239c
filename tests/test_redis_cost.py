"""The Redis cost benchmark's counting (benchmarks/redis_cost.py) against a real redis-server.

The benchmark's figures are only as good as its relay's count: every
command a client sends must be counted once, by name (EVALSHA by hoist
script), and agree with what Redis itself says in ``INFO commandstats``.
"""

from __future__ import annotations

from pathlib import Path

import redis

from benchmarks.redis_cost import CountingProxy, ServerReading, split_commands
from benchmarks.services import private_redis
from hoist.state import scripts


def test_split_commands_keeps_an_incomplete_request_for_the_next_read() -> None:
    whole = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n"
    names, used = split_commands(whole + whole[:7])
    assert (names, used) == (["set"], len(whole))
    assert split_commands(whole[:-1]) == ([], 0)


def test_split_commands_names_hoist_scripts() -> None:
    sha = redis.Redis().register_script(scripts.source("claim")).sha
    request = f"*3\r\n$7\r\nEVALSHA\r\n$40\r\n{sha}\r\n$1\r\n0\r\n".encode()
    assert split_commands(request) == (["evalsha claim"], len(request))


def test_the_relay_counts_what_redis_counts(tmp_path: Path) -> None:
    with private_redis(str(tmp_path / "redis")) as url:
        proxy = CountingProxy()
        try:
            relayed = redis.Redis.from_url(proxy.url("rank", "state", url))
            direct = redis.Redis.from_url(url)
            relayed.ping()  # the connection's handshake, before the reading
            before = ServerReading.of(direct)
            proxy.label = "measured"
            claim = relayed.register_script(scripts.source("states"))
            relayed.set("k", "x" * 1000)
            pipe = relayed.pipeline()  # MULTI, two commands, EXEC
            pipe.get("k").incr("n")  # INCRBY, as redis-py sends it
            pipe.execute()
            claim(keys=["no-such-record"], args=[])
            proxy.label = "after"
            since = ServerReading.of(direct).since(before)
            counted = proxy.traffic("rank", "state", ("measured",))
        finally:
            proxy.close()
    # EVALSHA failed once (NOSCRIPT) before redis-py loaded the script and ran it again.
    assert counted.commands["evalsha states"] == since.calls["evalsha"]
    for command in ("set", "get", "incrby", "multi", "exec"):
        assert counted.commands[command] == since.calls[command] == 1, command
    assert counted.sent > 1000  # the value crossed the relay
    assert counted.received > 0
    assert proxy.traffic("rank", "state", ("after",)).calls == 0
