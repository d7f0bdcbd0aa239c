"""The test servers themselves: later fault tests rely on these properties."""

from __future__ import annotations

import redis

from tests.services.redis import RedisServer


def test_redis_restart_keeps_port_and_data(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("hoist-test:survives", b"yes")
    port = redis_server.port
    redis_server.restart()
    assert redis_server.port == port
    assert redis.Redis.from_url(redis_server.url).get("hoist-test:survives") == b"yes"


def test_redis_listens_on_loopback_only(redis_server: RedisServer) -> None:
    bind = redis.Redis.from_url(redis_server.url).config_get("bind")["bind"]
    assert bind == "127.0.0.1"
